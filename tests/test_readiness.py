"""``/readyz`` is the sidecar's own readiness: config loaded, listeners up, not draining.

An upstream that fails its health probes shows in ``/status`` and the metrics, never in
readiness: a NotReady pod leaves its Service (and a native sidecar that never gets ready
keeps the app from starting) although the app and its other calls work.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import openai

from tests.servers import MockProvider, RefusedPort, SidecarProcess, default_config


def test_a_dead_upstream_shows_in_status_never_in_readiness(
    tmp_path: Path, mock_provider: MockProvider, refused_port: RefusedPort
) -> None:
    config = default_config(mock_provider.url)
    config["model_groups"]["solo"] = {
        "endpoints": [
            {"name": "dead", "url": refused_port.url + "/v1", "dialect": "openai", "api_key": "sk-test-0123456789"}
        ]
    }
    config["router"] = {"health": {"interval": 0.1, "timeout": 0.5, "unhealthy_after": 2}}
    sidecar = SidecarProcess(config, tmp_path)
    process, port, admin_port = sidecar.process, sidecar.port, sidecar.admin_port
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        deadline = time.monotonic() + 15
        while httpx.get(admin + "/status").json()["groups"]["solo"]["endpoints"][0]["health"] != "unhealthy":
            assert time.monotonic() < deadline, "the probes never found the dead endpoint"
            time.sleep(0.05)
        status = httpx.get(admin + "/status").json()["groups"]
        assert status["solo"]["ready"] is False and status["gpt-4o-mini"]["ready"] is True
        ready = httpx.get(admin + "/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {
            "config": True,
            "listeners": True,
            "upstream_session": True,
            "not_draining": True,
        }
        # The metrics carry the upstream's health for the dashboard and alerts.
        assert "llm_sidecar_endpoint_healthy{" in httpx.get(admin + "/metrics").text
        # The app's other calls work.
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
