"""A model group whose key is missing (``api_key_env`` unset, e.g. a Secret without that entry):
``serve`` starts and serves the other groups; that group's calls get a clear error in the
caller's dialect naming the variable (never a value); logs, ``/status`` and a metric say it.
``check-config`` still reports it as an error.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import yaml

from tests.servers import MockProvider, SidecarProcess, default_config

EXE = str(Path(sys.executable).with_name("llm-sidecar"))
OPENAI_KEY = "sk-test-openai-key-0123456789"
HELLO = [{"role": "user", "content": "hi"}]


def keys_from_env(mock_url: str) -> dict:
    """The default config with each group's key read from its provider's variable."""
    config = default_config(mock_url)
    for group, variable in (("gpt-4o-mini", "OPENAI_API_KEY"), ("claude-sonnet", "ANTHROPIC_API_KEY")):
        endpoint = config["model_groups"][group]["endpoints"][0]
        del endpoint["api_key"]
        endpoint["api_key_env"] = variable
    return config


def env_without_anthropic_key() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    return {**env, "OPENAI_API_KEY": OPENAI_KEY}


def check_config(config: dict, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``llm-sidecar check-config`` on ``config`` (written to a file), the Anthropic key unset."""
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [EXE, "check-config", str(path)], capture_output=True, text=True, env=env_without_anthropic_key()
    )


def test_check_config_still_reports_it(tmp_path: Path) -> None:
    done = check_config(keys_from_env("http://127.0.0.1:9"), tmp_path)
    assert done.returncode == 2
    assert (
        "model_groups.claude-sonnet.endpoints[0].api_key_env: environment variable ANTHROPIC_API_KEY is not set"
    ) in done.stderr
    assert OPENAI_KEY not in done.stderr + done.stdout


@pytest.fixture
def sidecar(tmp_path: Path, mock_provider: MockProvider):
    process = SidecarProcess(keys_from_env(mock_provider.url), tmp_path, env=env_without_anthropic_key())
    try:
        yield process.url, process.admin_url, process.log
    finally:
        process.stop()


def test_serve_starts_and_serves_the_other_groups(sidecar, mock_provider: MockProvider) -> None:
    url, admin, log = sidecar
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    assert client.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices[0].message.content

    # The keyless group: one error in the caller's dialect, naming the variable; not retried by the SDK.
    sent: list[httpx.Request] = []
    hooks = {"request": [sent.append]}
    claude = anthropic.Anthropic(
        base_url=url + "/anthropic", api_key="unused", http_client=anthropic.DefaultHttpxClient(event_hooks=hooks)
    )
    with pytest.raises(anthropic.InternalServerError) as caught:
        claude.messages.create(model="claude-sonnet", max_tokens=10, messages=HELLO)
    assert caught.value.body["error"]["type"] == "api_error"
    message = caught.value.body["error"]["message"]
    assert "claude-sonnet" in message and "ANTHROPIC_API_KEY is not set" in message, message
    assert len(sent) == 1  # x-should-retry: false
    # The OpenAI dialect gets the same, in its own error format.
    with pytest.raises(openai.InternalServerError) as caught_openai:
        client.chat.completions.create(model="claude-sonnet", messages=HELLO)
    assert "ANTHROPIC_API_KEY is not set" in caught_openai.value.body["message"]
    assert mock_provider.calls("mock-claude") == 0  # never sent upstream without its key

    endpoint = httpx.get(admin + "/status").json()["groups"]["claude-sonnet"]["endpoints"][0]
    assert endpoint["missing_key"] == "api_key_env: environment variable ANTHROPIC_API_KEY is not set"
    assert endpoint["usable"] is False
    metrics = httpx.get(admin + "/metrics").text
    assert re.search(r'^llm_sidecar_endpoint_key_missing\{[^}]*model_group="claude-sonnet"[^}]*\} 1\.0$', metrics, re.M)
    assert re.search(r'^llm_sidecar_endpoint_key_missing\{[^}]*model_group="gpt-4o-mini"[^}]*\} 0\.0$', metrics, re.M)
    assert httpx.get(admin + "/readyz").status_code == 200

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any("ANTHROPIC_API_KEY is not set" in str(line.get("missing")) for line in lines), lines
    everything = log.read_text() + metrics + httpx.get(admin + "/status").text + message
    assert OPENAI_KEY not in everything


def test_a_keyless_group_falls_back_to_a_group_with_its_key(
    make_sidecar, mock_provider: MockProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    config = default_config(mock_provider.url)
    claude = config["model_groups"]["claude-sonnet"]
    del claude["endpoints"][0]["api_key"]
    claude["endpoints"][0]["api_key_env"] = "ANTHROPIC_API_KEY"
    claude["fallbacks"] = ["gpt-4o-mini"]
    sidecar = make_sidecar(config=config)
    reply = sidecar.anthropic().messages.create(model="claude-sonnet", max_tokens=10, messages=HELLO)
    assert reply.content[0].text
    assert mock_provider.calls("mock-claude") == 0 and mock_provider.calls("mock-gpt") == 1


def test_a_key_pasted_into_api_key_env_is_never_repeated(tmp_path: Path, mock_provider: MockProvider) -> None:
    # The slip of writing the key where its variable's name goes: the missing-key reason repeated
    # the "name", so the key went to check-config's output, the log, /status and every call's error.
    pasted = "sk-proj-Pasted0123456789abcdefXYZ"
    config = keys_from_env(mock_provider.url)
    config["model_groups"]["claude-sonnet"]["endpoints"][0]["api_key_env"] = pasted
    done = check_config(config, tmp_path)
    assert done.returncode == 2
    assert "model_groups.claude-sonnet.endpoints[0].api_key_env: environment variable" in done.stderr
    assert pasted not in done.stderr + done.stdout
    process = SidecarProcess(config, tmp_path, env=env_without_anthropic_key())
    try:
        claude = anthropic.Anthropic(base_url=process.url + "/anthropic", api_key="unused", max_retries=0)
        with pytest.raises(anthropic.InternalServerError) as caught:
            claude.messages.create(model="claude-sonnet", max_tokens=10, messages=HELLO)
        seen = json.dumps(caught.value.body) + httpx.get(process.admin_url + "/status").text
        seen += httpx.get(process.admin_url + "/metrics").text
    finally:
        process.stop()
    assert "api_key_env" in seen and pasted not in seen + process.log.read_text()


def test_a_key_with_a_trailing_newline_is_sent_without_it(tmp_path: Path, mock_provider: MockProvider) -> None:
    # kubectl create secret --from-file=OPENAI_API_KEY=key.txt keeps the file's last newline in the
    # variable. Keys from files were stripped, those from the environment were not: every call was
    # a 500 "the sidecar failed to handle this call" (a newline is not allowed in a header).
    config = keys_from_env(mock_provider.url)
    anthropic_endpoint = config["model_groups"]["claude-sonnet"]["endpoints"][0]
    del anthropic_endpoint["api_key_env"]
    anthropic_endpoint["api_key"] = "${ANTHROPIC_API_KEY}"  # a literal key expanded from the environment
    env = {**os.environ, "OPENAI_API_KEY": OPENAI_KEY + "\n", "ANTHROPIC_API_KEY": "sk-ant-test-0123456789\r\n"}
    process = SidecarProcess(config, tmp_path, env=env)
    try:
        client = openai.OpenAI(base_url=process.url + "/v1", api_key="unused", max_retries=0)
        assert client.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices[0].message.content
        claude = anthropic.Anthropic(base_url=process.url + "/anthropic", api_key="unused", max_retries=0)
        assert claude.messages.create(model="claude-sonnet", max_tokens=10, messages=HELLO).content[0].text
    finally:
        process.stop()
    sent = [request["headers"] for request in mock_provider.requests()]
    assert sent[0]["authorization"] == f"Bearer {OPENAI_KEY}" and sent[1]["x-api-key"] == "sk-ant-test-0123456789"


def test_a_key_pasted_into_api_key_file_is_never_repeated(tmp_path: Path) -> None:
    # As with api_key_env: "cannot read sk-...: No such file or directory" showed the key.
    pasted = "sk-proj-Pasted0123456789abcdefXYZ"
    config = keys_from_env("http://127.0.0.1:9")
    endpoint = config["model_groups"]["claude-sonnet"]["endpoints"][0]
    del endpoint["api_key_env"]
    endpoint["api_key_file"] = pasted
    done = check_config(config, tmp_path)
    assert done.returncode == 2
    assert "model_groups.claude-sonnet.endpoints[0].api_key_file: cannot read" in done.stderr
    assert pasted not in done.stderr + done.stdout
    # An absolute path, as a mounted Secret's, is still named.
    endpoint["api_key_file"] = str(tmp_path / "no-such-key")
    done = check_config(config, tmp_path)
    assert f"cannot read {tmp_path / 'no-such-key'}: No such file or directory" in done.stderr
