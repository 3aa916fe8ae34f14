"""Fleet budgets through the user's path: sidecars sharing a real redis-server, SDK clients, the mock."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import redis as redis_py
import yaml

from tests.fleet.conftest import Load, closed_loop, fleet_config, jain
from tests.servers import LLM_SIDECAR, default_config
from tests.telemetry.conftest import Scrape, exposition
from tests.waiting import wait_until, wait_until_async


def _two_dialects(mock_url: str, redis_url: str, limits: dict[str, Any], **router: Any) -> dict[str, Any]:
    config = fleet_config(mock_url, redis_url, limits, **router)
    (endpoint,) = default_config(mock_url)["model_groups"]["claude-sonnet"]["endpoints"]
    config["model_groups"]["claude-sonnet"] = {"endpoints": [{**endpoint, "fleet": limits}], "cache": {"mode": "off"}}
    return config


def test_a_used_up_rate_is_a_429_with_retry_after_in_the_callers_dialect(mock_provider, redis, make_sidecar) -> None:
    sidecar = make_sidecar(config=_two_dialects(mock_provider.url, redis.url, {"rpm": 1}, queue_timeout=0.2))
    messages = [{"role": "user", "content": "hi"}]
    sidecar.openai().chat.completions.create(model="gpt-4o-mini", messages=messages)
    sidecar.anthropic().messages.create(model="claude-sonnet", max_tokens=10, messages=messages)

    with pytest.raises(openai.RateLimitError) as openai_error:
        sidecar.openai().chat.completions.create(model="gpt-4o-mini", messages=messages)
    with pytest.raises(anthropic.RateLimitError) as anthropic_error:
        sidecar.anthropic().messages.create(model="claude-sonnet", max_tokens=10, messages=messages)

    # One call a minute: the budget returns a minute after the first call.
    for error in (openai_error.value, anthropic_error.value):
        assert 55 <= int(error.response.headers["retry-after"]) <= 60
        assert "no fleet budget left for endpoint" in error.message
    assert anthropic_error.value.body["type"] == "error"
    assert mock_provider.calls() == 2


async def test_calls_over_the_rpm_wait_for_budget_and_the_mock_sees_the_rate(
    mock_provider, redis, make_sidecar
) -> None:
    config = fleet_config(mock_provider.url, redis.url, {"rpm": 600}, queue_timeout=10)
    sidecars = [make_sidecar(config=config) for _ in range(2)]

    load = await closed_loop([s.url for s in sidecars], workers=4, seconds=3)

    assert load.failed() == 0, load.statuses
    # 10 a second, with a burst of one second's worth: at most 10 + 10·w in any w seconds.
    total = mock_provider.calls("mock-gpt")
    print(f"{total} calls in 3 s at rpm 600, busiest 2 s: {_window(mock_provider, 2.0)}")
    # The burst, then the rate for 80 % of the 3 s at least: calls that waited were served as the budget returned.
    assert 10 + 10 * 3 * 0.8 <= total <= 10 + 10 * 4 + 1, total
    window = _window(mock_provider, 2.0)
    assert window <= 10 + 20 + 1, window


async def test_a_sidecar_whose_callers_retry_at_once_gets_no_more_than_its_share_of_the_rate(
    mock_provider, redis, sidecar_processes
) -> None:
    """One sidecar answers 429 at once (``queue_timeout: 0``) and its callers ask again at once: it
    asks Redis far more often than three that queue their calls until the rate's budget returns.
    Asking more often must not buy more: while others wait, each sidecar keeps to an equal share."""
    rpm = 2400  # 40 a second: about 10 a second for each of the four
    eager = sidecar_processes(fleet_config(mock_provider.url, redis.url, {"rpm": rpm}, queue_timeout=0), 1)
    patient = sidecar_processes(fleet_config(mock_provider.url, redis.url, {"rpm": rpm}, queue_timeout=30), 3)
    load = Load()
    running = asyncio.create_task(closed_loop([s.url for s in eager + patient], workers=2, seconds=10, load=load))
    # The first second's burst goes to whoever asks first: count from when it and a second more are spent.
    await wait_until_async(lambda: sum(load.ok(i) for i in range(4)) >= 2 * rpm / 60, what="the burst spent")
    before, counted_from = [load.ok(i) for i in range(4)], time.monotonic()
    await running
    shares, seconds = [load.ok(i) - before[i] for i in range(4)], time.monotonic() - counted_from
    print(f"calls per sidecar in {seconds:.1f} s (the first's retry at once) {shares}; Jain's index {jain(shares):.4f}")
    assert all(set(load.statuses[i]) == {200} for i in range(1, 4)), load.statuses  # the patient ones waited
    assert 0.9 * rpm / 60 * seconds <= sum(shares) <= rpm / 60 * (seconds + 1), shares  # the rate, all of it
    # The eager one gets no more than the others (194 against 48-65 before the share rule). The three
    # patient ones are compared as a whole: on a loaded machine one that waits for a core between its
    # turns gives some of its share to the others (the 20 % band between all four is the minute-long
    # check's, make fleet, where ~300 calls each make it a measure of the rule, not of the machine).
    # Jain's index was 0.69 before; 0.95 still holds with one patient sidecar at ~70 % of the others.
    patient_mean = sum(shares[1:]) / 3
    assert shares[0] <= 1.2 * patient_mean, shares
    assert jain(shares) > 0.95, shares


def _window(mock_provider, seconds: float) -> int:
    """The most calls the mock saw start within any ``seconds``."""
    with urllib.request.urlopen(f"{mock_provider.url}/_mock/stats?window={seconds}") as response:
        return json.loads(response.read())["max_in_window"]["mock-gpt"]


def test_a_calls_token_reservation_is_settled_to_its_real_usage(mock_provider, redis, make_sidecar) -> None:
    tpm = 6000  # 100 tokens a second: 10 ms a token
    sidecar = make_sidecar(config=fleet_config(mock_provider.url, redis.url, {"tpm": tpm}))
    client = redis_py.Redis.from_url(redis.url)
    before = _redis_ms(client)
    # Reserves the prompt and the output cap (90), at most one second's worth (100 tokens) ...
    reply = sidecar.openai().chat.completions.create(
        model="gpt-4o-mini", max_tokens=90, messages=[{"role": "user", "content": "settle me"}]
    )
    after = _redis_ms(client)
    used = reply.usage.total_tokens
    assert used < 50
    # ... and settles to what the answer used: the budget's clock moved by `used` tokens, not 100.
    key = "llm-sidecar:fleet:{default/gpt-4o-mini/mock-openai}:tpm"
    wait_until(lambda: float(client.get(key) or 0) - used * 60_000 / tpm <= after, what="the release settled")
    moved_from = float(client.get(key)) - used * 60_000 / tpm
    assert before - 1 <= moved_from <= after + 1


async def test_sidecars_sharing_a_token_rate_get_back_what_their_calls_did_not_use(
    mock_provider, redis, sidecar_processes
) -> None:
    """Two sidecars want more than the TPM: each keeps to its share, and a call's unused
    reservation (it reserves its output cap, uses a few tokens) goes back to the sidecar's share
    as it goes back to the fleet's, so the fleet still spends its whole token rate."""
    tpm = 6000  # 100 tokens a second; a call reserves ~95 (its prompt and max_tokens=90)
    config = fleet_config(mock_provider.url, redis.url, {"tpm": tpm}, queue_timeout=10)
    sidecars = sidecar_processes(config, 2)
    async with openai.AsyncOpenAI(base_url=sidecars[0].url + "/v1", api_key="sk-client", max_retries=0) as client:
        probe = await client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=90, messages=[{"role": "user", "content": "go"}]
        )
    assert probe.usage is not None
    used = probe.usage.total_tokens
    assert used < 40  # a few tokens of the ~95 reserved

    started = time.monotonic()
    load = await closed_loop([s.url for s in sidecars], workers=2, seconds=6, max_tokens=90)
    seconds = time.monotonic() - started
    spent = used * sum(load.ok(i) for i in range(2))
    print(f"{spent} tokens used in {seconds:.1f} s at tpm {tpm} ({used} a call); calls {load.statuses}")
    assert load.failed() == 0, load.statuses
    # The fleet's rate is 100 tokens a second (and one second's burst): with every unused token
    # given back to the fleet and to the sidecar's share, and waiters asking again as calls end,
    # the two spend most of it (before: 210-252 tokens in 7-9 s, ~25 a second).
    assert spent >= 0.6 * tpm / 60 * seconds, (spent, load.statuses)
    assert spent <= tpm / 60 * (seconds + 1) + 2 * 100, (spent, load.statuses)


def _redis_ms(client: redis_py.Redis) -> float:
    seconds, micros = client.time()
    return seconds * 1000 + micros / 1000


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 429, "retry_after": 5},  # the provider asks for rest
        {"status": 500},  # the circuit opens (after one failure here)
    ],
    ids=["retry-after", "open-circuit"],
)
def test_a_cooldown_seen_by_one_sidecar_cools_the_endpoint_for_the_fleet(
    mock_provider, redis, make_sidecar, fault
) -> None:
    config = fleet_config(
        mock_provider.url,
        redis.url,
        {},
        circuit={"failures": 1, "open_for": 5},
        max_attempts=1,
    )
    first, second = make_sidecar(config=config), make_sidecar(config=config)
    messages = [{"role": "user", "content": "hi"}]
    mock_provider.set_behaviour("mock-gpt", **fault)
    with pytest.raises(openai.APIStatusError):
        first.openai().chat.completions.create(model="gpt-4o-mini", messages=messages)
    mock_provider.set_behaviour("mock-gpt")  # the provider is fine again; the fleet does not know yet
    calls = mock_provider.calls()

    with pytest.raises(openai.RateLimitError) as error:
        second.openai().chat.completions.create(model="gpt-4o-mini", messages=messages)

    assert mock_provider.calls() == calls  # the second sidecar never called the provider
    assert 4 <= int(error.value.response.headers["retry-after"]) <= 5
    endpoint = second.pipeline.router.groups["gpt-4o-mini"][0]
    assert not endpoint.usable(time.monotonic())


async def test_a_call_falls_back_to_an_endpoint_with_fleet_budget(mock_provider, redis, make_sidecar) -> None:
    mock_provider.set_behaviour("mock-gpt", latency_ms=300)
    mock_provider.set_behaviour("mock-other", latency_ms=300)
    config = fleet_config(mock_provider.url, redis.url, {"max_concurrent": 1})
    spare = {**config["model_groups"]["gpt-4o-mini"]["endpoints"][0], "name": "spare", "model": "mock-other"}
    config["model_groups"]["gpt-4o-mini"]["endpoints"].append({**spare, "priority": 1, "fleet": {"max_concurrent": 5}})
    sidecar = make_sidecar(config=config)

    load = await closed_loop([sidecar.url], workers=2, seconds=0)

    assert load.failed() == 0
    assert mock_provider.stats()["calls"] == {"mock-gpt": 1, "mock-other": 1}


LISTED = {"endpoints": [{"name": "openai", "url": "https://api.openai.com/v1", "fleet": {"rpm": 100}}]}
#: the endpoint template of a ``discover`` section carries fleet limits too (they were once dropped)
DISCOVERED = {"discover": {"dns": "vllm.models.svc.cluster.local", "port": 8000, "endpoint": {"fleet": {"rpm": 100}}}}


@pytest.mark.parametrize(
    ("group", "where"),
    [(LISTED, "endpoints[0].fleet"), (DISCOVERED, "discover.endpoint.fleet")],
    ids=["listed", "discovered"],
)
def test_fleet_limits_without_a_shared_redis_are_a_config_error(tmp_path: Path, group, where) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump({"model_groups": {"llm": group}}))

    result = subprocess.run([LLM_SIDECAR, "check-config", str(path)], capture_output=True, text=True, timeout=60)

    assert result.returncode != 0
    assert f"model_groups.llm.{where}: fleet limits need cache.backend: redis" in result.stderr


def test_fleet_metrics_show_the_budget_and_pass_promtool(mock_provider, redis, make_sidecar) -> None:
    sidecar = make_sidecar(
        config=fleet_config(mock_provider.url, redis.url, {"max_concurrent": 4, "rpm": 1}, queue_timeout=0)
    )
    client = sidecar.openai()
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "one"}])
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "two"}])

    text, _ = exposition(sidecar)
    scrape = Scrape(text)
    budget = {"budget": "gpt-4o-mini/mock-openai"}
    assert scrape.value("llm_sidecar_fleet_limit", kind="max_concurrent", **budget) == 4
    assert scrape.value("llm_sidecar_fleet_limit", kind="rpm", **budget) == 1
    assert scrape.value("llm_sidecar_fleet_grants_total", **budget) == 1
    assert scrape.value("llm_sidecar_fleet_denials_total", reason="rate", **budget) == 1
    assert scrape.value("llm_sidecar_fleet_fail_open") == 0
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_fleet_limits_on_a_redis_cluster(mock_provider, redis_cluster, make_sidecar) -> None:
    """A budget's keys share a hash tag, so its one script runs on one master of a real cluster."""
    mock_provider.set_behaviour("mock-gpt", latency_ms=100)
    config = fleet_config(mock_provider.url, redis_cluster.url, {"max_concurrent": 2, "rpm": 6000}, queue_timeout=10)
    config["cache"]["redis_mode"] = "cluster"
    sidecars = [make_sidecar(config=config) for _ in range(2)]
    fleets = [s.pipeline.router.fleet for s in sidecars]
    # Each sees the other through the cluster before the load (the cluster client maps its slots first).
    await asyncio.to_thread(wait_until, lambda: all(f.live == 2 and not f.open for f in fleets), what="both seen")

    load = await closed_loop([s.url for s in sidecars], workers=3, seconds=1)

    assert load.failed() == 0, load.statuses
    assert mock_provider.stats()["max_in_flight"]["mock-gpt"] == 2
    assert not any(f.open for f in fleets)


async def test_a_call_that_queued_for_a_local_slot_still_needs_fleet_budget(mock_provider, redis, make_sidecar) -> None:
    mock_provider.set_behaviour("mock-gpt", latency_ms=100)
    config = fleet_config(mock_provider.url, redis.url, {"max_concurrent": 1}, queue_timeout=30)
    config["model_groups"]["gpt-4o-mini"]["endpoints"][0]["max_concurrent"] = 1  # this sidecar's own slot
    sidecars = [make_sidecar(config=config) for _ in range(2)]

    load = await closed_loop([s.url for s in sidecars], workers=2, seconds=1.5)

    assert load.failed() == 0, load.statuses
    assert mock_provider.stats()["max_in_flight"]["mock-gpt"] == 1
