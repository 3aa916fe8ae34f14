"""Build the image with buildah and run it with podman (slow; needs root, buildah, podman, debootstrap)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube.conftest import ROOT

pytestmark = pytest.mark.slow
#: this run's tag: another run of the suite (another checkout, other code) may build at the same time
IMAGE = f"localhost/llm-sidecar:test-{uuid.uuid4().hex[:8]}"
VFS = ["--storage-driver", "vfs"]


def _missing() -> str | None:
    tools = [t for t in ("buildah", "podman", "debootstrap", "unshare") if not shutil.which(t)]
    if tools:
        return f"needs {', '.join(tools)} (apt-get install buildah podman debootstrap)"
    if os.geteuid() != 0:
        return "needs root (debootstrap, vfs storage, unshare -m)"
    return None


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if reason := _missing():
        pytest.skip(reason)
    subprocess.run([str(ROOT / "scripts" / "make-base-image.sh")], check=True, timeout=900)
    # Build from a staged context: exactly what .dockerignore lets through.
    ctx = tmp_path_factory.mktemp("context")
    shutil.copy(ROOT / "Dockerfile", ctx)
    shutil.copy(ROOT / "pyproject.toml", ctx)
    shutil.copytree(ROOT / "proxy", ctx / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    readme = ROOT / "README.md"
    (ctx / "README.md").write_text(readme.read_text() if readme.exists() else "llm-sidecar\n")
    subprocess.run(
        [
            "buildah",
            *VFS,
            "bud",
            "--isolation",
            "chroot",
            "--pull=never",
            "-v",
            "/etc/ssl/certs:/etc/ssl/certs:ro",
            "-t",
            IMAGE,
            str(ctx),
        ],
        check=True,
        timeout=1200,
    )
    yield IMAGE
    subprocess.run(["podman", *VFS, "rmi", "-f", IMAGE], capture_output=True, timeout=300)


def _podman_script(script: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a bash script for podman in a private mount namespace (the cgroup v1/v2 hybrid mount off)."""
    script = "umount /sys/fs/cgroup/unified 2>/dev/null || true\n" + script
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_image_metadata(image: str) -> None:
    out = subprocess.run(["podman", *VFS, "image", "inspect", image], check=True, capture_output=True, text=True)
    config = json.loads(out.stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["llm-sidecar"]
    assert config.get("StopSignal") in ("SIGTERM", "15")


def test_image_serves_health_and_a_proxied_completion(image: str, tmp_path: Path) -> None:
    """Run the mock provider and the sidecar from the image (host network, read-only root)."""
    mock, proxy, admin = _port(), _port(), _port()
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {proxy}, admin_host: 127.0.0.1, admin_port: {admin}}}\n"
        "model_groups:\n  gpt-4o-mini:\n    endpoints:\n"
        f"      - {{name: mock, url: 'http://127.0.0.1:{mock}/v1', dialect: openai, api_key_env: MOCK_KEY}}\n"
        "cache: {backend: memory}\n"
    )
    # Names of this run only: another run of the suite may have its own pair up at the same time.
    suffix = uuid.uuid4().hex[:8]
    mock_name, sidecar_name = f"llm-mock-{suffix}", f"llm-sc-{suffix}"
    run = [
        "podman",
        *VFS,
        "run",
        "-d",
        "--rm",
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=32768:32768",
    ]
    script = f"""
set -e
{" ".join(run)} --name {mock_name} {image} mock-provider --host 127.0.0.1 --port {mock} >/dev/null
{" ".join(run)} --name {sidecar_name} -e MOCK_KEY=k -v {config}:/etc/llm-sidecar/sidecar.yaml:ro {image} >/dev/null
ok=0
for i in $(seq 100); do
  if curl -fsS http://127.0.0.1:{admin}/healthz >/dev/null 2>&1; then ok=1; break; fi; sleep 0.2
done
if [ $ok = 1 ]; then
  curl -fsS -H 'content-type: application/json' -H 'authorization: Bearer k' \
    -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi"}}]}}' \
    http://127.0.0.1:{proxy}/v1/chat/completions > {tmp_path}/completion.json || ok=0
fi
podman {" ".join(VFS)} logs {sidecar_name} > {tmp_path}/sidecar.log 2>&1 || true
[ $ok = 1 ]
"""
    try:
        res = _podman_script(script, timeout=180)
    finally:
        # Whatever happened above (a failed start, a timeout), neither container outlives the test.
        _podman_script(f"podman {' '.join(VFS)} rm -f -i -t 3 {sidecar_name} {mock_name} >/dev/null", timeout=60)
    log = (tmp_path / "sidecar.log").read_text() if (tmp_path / "sidecar.log").exists() else ""
    assert res.returncode == 0, res.stdout + res.stderr + log
    body = json.loads((tmp_path / "completion.json").read_text())
    assert body["choices"][0]["message"]["content"]
