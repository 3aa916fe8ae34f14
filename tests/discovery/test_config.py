"""``llm-sidecar check-config`` on ``discover`` sections: each mistake named by its field path."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.servers import LLM_SIDECAR


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    return subprocess.run([LLM_SIDECAR, "check-config", str(path)], capture_output=True, text=True, timeout=60)


def test_discover_sections_are_checked_by_field_path(tmp_path: Path) -> None:
    good = check(
        tmp_path,
        "model_groups:\n"
        "  llama:\n"
        "    balance: latency\n"
        "    discover: {service: vllm, namespace: models, port: http, endpoint: {model: m, max_concurrent: 8}}\n",
    )
    assert good.returncode == 0, good.stderr
    assert "llama (0 endpoint(s) + discovered)" in good.stdout + good.stderr

    bad = check(
        tmp_path,
        "model_groups:\n"
        "  a: {discover: {service: vllm, endpoint: {url: 'http://10.0.0.1'}}}\n"
        "  b: {discover: {dns: vllm.models.svc.cluster.local, port: http}}\n"
        "  c: {discover: {service: vllm, dns: vllm.models.svc.cluster.local}}\n"
        "  d: {discover: {service: vllm, endpoint: {api_key_env: VLLM_KEY_NOT_SET_HERE}}}\n"
        "  e: {}\n",
    )
    assert bad.returncode != 0
    for line in (
        "model_groups.a.discover.endpoint.url: set by discovery for each address (use discover.path)",
        "model_groups.b.discover.port: a number is needed with dns",
        "model_groups.c.discover: set one of service (EndpointSlices) or dns",
        "model_groups.d.discover.endpoint.api_key_env: environment variable VLLM_KEY_NOT_SET_HERE is not set",
        "model_groups.e: a model group needs endpoints, discover, or both",
    ):
        assert line in bad.stderr, bad.stderr
