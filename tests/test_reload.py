"""Config reload: ``llm-sidecar serve`` picks up a changed file (or SIGHUP) without dropping a call.

The config is written the way a Kubernetes ConfigMap volume does it: the file is a
symlink into ``..data``, itself a symlink swapped atomically to a new directory.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests import servers
from tests.servers import PROVIDER_KEY, MockProvider, default_config
from tests.waiting import wait_until, wait_until_async


class ConfigMapDir:
    """A ConfigMap volume as the kubelet updates it (its atomic writer): the new files go to a
    fresh timestamped directory, the ``..data`` symlink is swapped to it in one rename, and the
    previous directory is removed. ``sidecar.yaml`` is a symlink to ``..data/sidecar.yaml``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "sidecar.yaml"
        self.version = 0
        #: the directory ``..data`` points to
        self.current: Path | None = None

    def write(self, config: dict[str, Any] | str) -> None:
        self.version += 1
        target = self.root / f"..2026_12_02_07_50_{self.version:02d}.{os.getpid()}"
        target.mkdir()
        (target / "sidecar.yaml").write_text(config if isinstance(config, str) else yaml.safe_dump(config))
        link = self.root / "..data_tmp"
        link.symlink_to(target.name)
        os.replace(link, self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to("..data/sidecar.yaml")
        if self.current is not None:
            shutil.rmtree(self.current)
        self.current = target


class SidecarProcess(servers.SidecarProcess):
    """The installed ``llm-sidecar serve`` on a ConfigMap-like directory, ready."""

    def __init__(self, tmp_path: Path, config: dict[str, Any], injected: bool = False) -> None:
        self.files = ConfigMapDir(tmp_path)
        super().__init__(copy.deepcopy(config), tmp_path, injected)
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="x", max_retries=0)

    def write_config(self, config: dict[str, Any]) -> Path:
        self.files.write(config)
        return self.files.path

    def rewrite(self, change: Callable[[dict[str, Any]], None]) -> None:
        change(self.config)
        self.files.write(self.config)

    def reloads(self, result: str) -> float:
        text = httpx.get(self.admin_url + "/metrics").text
        match = re.search(rf'^llm_sidecar_config_reloads_total\{{result="{result}"\}} (\S+)$', text, re.M)
        return float(match.group(1)) if match else 0.0

    def wait_reloads(self, result: str, count: float, timeout: float = 5) -> None:
        wait_until(lambda: self.reloads(result) >= count, timeout, interval=0.05, what=f"{count} {result} reloads")

    def ask(self, model: str) -> str:
        reply = self.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        return reply.choices[0].message.content or ""

    def events(self) -> list[dict[str, Any]]:
        """The sidecar's own events (not its access lines)."""
        return [e for e in super().events() if e["logger"] == "llm_sidecar"]


@pytest.fixture
def start(tmp_path: Path, mock_provider: MockProvider) -> Iterator[Callable[..., SidecarProcess]]:
    started: list[SidecarProcess] = []

    def make(reload_interval: float = 0.1, injected: bool = False, **overrides: Any) -> SidecarProcess:
        config = default_config(mock_provider.url, **overrides)
        config["server"]["reload_interval"] = reload_interval
        process = SidecarProcess(tmp_path, config, injected)
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


def last_upstream_model(mock_provider: MockProvider) -> str:
    return mock_provider.requests()[-1]["body"]["model"]


def add_group_and_change_model(config: dict[str, Any]) -> None:
    groups = config["model_groups"]
    groups["gpt-4o-mini"]["endpoints"][0]["model"] = "mock-gpt-v2"
    endpoint = {**groups["gpt-4o-mini"]["endpoints"][0], "name": "mock-big", "model": "mock-gpt-big"}
    groups["gpt-4o"] = {"endpoints": [endpoint]}


def test_a_changed_file_applies_to_new_calls_while_a_stream_in_flight_finishes_whole(
    start: Callable[..., SidecarProcess], mock_provider: MockProvider
) -> None:
    sidecar = start()
    assert sidecar.ask("gpt-4o-mini") and last_upstream_model(mock_provider) == "mock-gpt"
    # 20 chunks 100 ms apart: the stream outlives the reload.
    mock_provider.set_behaviour("mock-gpt", chunk_delay_ms=100, chunks=20)
    stream = sidecar.client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
    )
    chunks = iter(stream)
    first = next(chunks)
    sidecar.rewrite(add_group_and_change_model)
    sidecar.wait_reloads("ok", 1)

    assert sidecar.ask("gpt-4o") and last_upstream_model(mock_provider) == "mock-gpt-big"
    assert sidecar.ask("gpt-4o-mini") and last_upstream_model(mock_provider) == "mock-gpt-v2"
    rest = list(chunks)
    words = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
    assert len(words.split()) == 20  # the stream begun before the reload finished on the old pipeline

    status = httpx.get(sidecar.admin_url + "/status").json()["groups"]
    assert set(status) == {"gpt-4o-mini", "claude-sonnet", "gpt-4o"}
    assert [e["name"] for e in status["gpt-4o"]["endpoints"]] == ["mock-big"]
    metrics = httpx.get(sidecar.admin_url + "/metrics").text
    assert 'llm_sidecar_endpoint_slots{model_group="gpt-4o",upstream="mock-big"}' in metrics
    assert metrics.count("llm_sidecar_endpoint_slots{") == 3  # one collector, re-bound: no stale endpoints
    assert "gpt-4o" in [m.id for m in sidecar.client.models.list()]
    reloaded = [e for e in sidecar.events() if e["msg"] == "config reloaded"]
    assert len(reloaded) == 1 and reloaded[0]["cache"] == "kept"


def test_an_invalid_file_keeps_the_running_config_and_logs_the_field_path(
    start: Callable[..., SidecarProcess], mock_provider: MockProvider
) -> None:
    sidecar = start()

    def break_it(config: dict[str, Any]) -> None:
        config["model_groups"]["gpt-4o-mini"]["endpoints"][0]["max_concurrent"] = 0
        config["model_groups"]["gpt-4o-mini"]["endpoints"][0]["model"] = "mock-never"

    sidecar.rewrite(break_it)
    sidecar.wait_reloads("error", 1)
    assert sidecar.ask("gpt-4o-mini") and last_upstream_model(mock_provider) == "mock-gpt"
    # Not YAML at all, on the line that holds the key: the error must not quote the line.
    sidecar.files.write(yaml.safe_dump(sidecar.config).replace(PROVIDER_KEY, PROVIDER_KEY + ": [oops"))
    sidecar.wait_reloads("error", 2)
    assert sidecar.ask("gpt-4o-mini") and last_upstream_model(mock_provider) == "mock-gpt"
    assert sidecar.reloads("ok") == 0
    sidecar.stop()

    failed = [e for e in sidecar.events() if e["msg"] == "config reload failed"]
    assert len(failed) == 2 and all(e["level"] == "error" for e in failed)
    assert any("model_groups.gpt-4o-mini.endpoints[0].max_concurrent" in line for line in failed[0]["errors"])
    assert "not valid YAML at line" in failed[1]["errors"][0]
    assert PROVIDER_KEY not in sidecar.log.read_text()


def test_sighup_reloads_when_watching_is_off(start: Callable[..., SidecarProcess], mock_provider: MockProvider) -> None:
    sidecar = start(reload_interval=0)
    sidecar.rewrite(add_group_and_change_model)
    # A negative: no watcher may pick the change up. Given the time a watching sidecar (0.1 s
    # polls) takes several times over; there is no event to wait for when nothing should happen.
    time.sleep(0.5)
    with pytest.raises(openai.NotFoundError):
        sidecar.ask("gpt-4o")  # not watching: the change waits for the signal
    sidecar.process.send_signal(signal.SIGHUP)
    sidecar.wait_reloads("ok", 1)
    assert sidecar.ask("gpt-4o") and last_upstream_model(mock_provider) == "mock-gpt-big"
    assert sidecar.process.poll() is None


def test_restart_only_settings_warn_and_the_rest_applies(
    start: Callable[..., SidecarProcess], mock_provider: MockProvider
) -> None:
    sidecar = start()

    def change(config: dict[str, Any]) -> None:
        config["server"]["max_body_bytes"] = 1000
        add_group_and_change_model(config)

    sidecar.rewrite(change)
    sidecar.wait_reloads("ok", 1)
    assert sidecar.ask("gpt-4o-mini") and last_upstream_model(mock_provider) == "mock-gpt-v2"
    big = httpx.post(
        sidecar.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 5000}]},
    )
    assert big.status_code == 200  # the listener's body limit stays until a restart
    warned = [e for e in sidecar.events() if e["msg"] == "config reload: restart needed"]
    assert warned and warned[0]["sections"] == ["server.max_body_bytes"] and warned[0]["level"] == "warning"


def test_no_call_fails_while_the_config_changes_under_load(
    start: Callable[..., SidecarProcess], mock_provider: MockProvider
) -> None:
    sidecar = start(reload_interval=0.05)
    mock_provider.set_behaviour("mock-gpt", chunk_delay_ms=5, chunks=10)
    mock_provider.set_behaviour("mock-gpt-v2", chunk_delay_ms=5, chunks=10)
    failures: list[str] = []
    done = 0

    reloaded = asyncio.Event()

    async def caller(client: httpx.AsyncClient, number: int) -> None:
        nonlocal done
        while not reloaded.is_set():
            stream = number % 2 == 0
            body = {"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": f"{done}"}]}
            response = await client.post("/v1/chat/completions", json=body, headers={"cache-control": "no-store"})
            if response.status_code != 200 or (stream and not response.text.rstrip().endswith("[DONE]")):
                failures.append(f"{response.status_code} {response.text[:200]}")
            done += 1

    async def load() -> None:
        async with httpx.AsyncClient(base_url=sidecar.url, timeout=10) as client:
            await asyncio.gather(*(caller(client, n) for n in range(8)))

    def flip(config: dict[str, Any]) -> None:
        endpoint = config["model_groups"]["gpt-4o-mini"]["endpoints"][0]
        endpoint["model"] = "mock-gpt-v2" if endpoint["model"] == "mock-gpt" else "mock-gpt"
        endpoint["max_concurrent"] = 8 + sidecar.files.version % 3
        config["cache"] = {"max_bytes": 10**6 + sidecar.files.version}  # a new cache: the old one retires

    async def reloads() -> None:
        # Each change lands while calls are running; the next is written once the last is applied.
        for number in range(1, 9):
            await wait_until_async(lambda n=number: done >= 10 * n, what="calls between reloads")
            sidecar.rewrite(flip)
            await asyncio.to_thread(sidecar.wait_reloads, "ok", number, 15)
        reloaded.set()

    async def main() -> None:
        await asyncio.gather(load(), reloads())

    asyncio.run(main())
    assert not failures, failures[:5]
    assert done > 50
    sidecar.wait_reloads("ok", 8)
    assert sidecar.reloads("error") == 0
    assert mock_provider.calls("mock-gpt") > 0 and mock_provider.calls("mock-gpt-v2") > 0
    sidecar.stop()
    assert "Traceback" not in sidecar.log.read_text()
    assert not [e for e in sidecar.events() if e["level"] in ("error", "warning")]


def test_an_alias_bomb_or_a_non_utf8_reload_keeps_the_running_config(
    start: Callable[..., SidecarProcess], mock_provider: MockProvider
) -> None:
    from tests.test_config import BOMB

    sidecar = start()
    sidecar.files.write(BOMB)
    sidecar.wait_reloads("error", 1, timeout=30)
    assert sidecar.ask("gpt-4o-mini")
    (sidecar.files.current / "sidecar.yaml").write_bytes(
        (yaml.safe_dump(sidecar.config) + "# caf\xe9\n").encode("latin-1")
    )
    sidecar.wait_reloads("error", 2, timeout=30)
    assert sidecar.ask("gpt-4o-mini")
    sidecar.stop()
    failed = [e for e in sidecar.events() if e["msg"] == "config reload failed"]
    assert "more than 100000 values once its aliases are expanded" in failed[0]["errors"][0]
    assert failed[1]["errors"] == ["the config is not UTF-8 text"]


def test_ports_from_the_command_line_outlive_a_reload(
    start: Callable[..., SidecarProcess], mock_provider: MockProvider
) -> None:
    """An injected sidecar's ports are its args (per pod); the shared ConfigMap holds the chart's.
    A reload applies the rest, keeps listening where it was told, and asks for no restart."""
    sidecar = start(injected=True)
    sidecar.rewrite(add_group_and_change_model)
    sidecar.wait_reloads("ok", 1)
    assert sidecar.ask("gpt-4o") and last_upstream_model(mock_provider) == "mock-gpt-big"
    assert [e for e in sidecar.events() if e["msg"] == "config reload: restart needed"] == []


def test_a_reloaded_cache_policy_applies_to_the_next_call(
    start: Callable[..., SidecarProcess], mock_provider: MockProvider
) -> None:
    sidecar = start()

    def status() -> str:
        reply = sidecar.client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "cached?"}], temperature=0
        )
        return reply.headers["x-llm-sidecar-cache"]

    assert status() == "miss"
    wait_until(lambda: status() == "hit", 5, interval=0.05, what="the answer to be stored")

    def cache_off(config: dict[str, Any]) -> None:
        config["model_groups"]["gpt-4o-mini"]["cache"] = {"mode": "off"}

    sidecar.rewrite(cache_off)
    sidecar.wait_reloads("ok", 1)
    assert status() == "bypass"  # the kept cache reads the new policy, not one it worked out before
