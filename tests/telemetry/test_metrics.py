"""``/metrics``: parsed with real parsers, and counters that move as calls go through every outcome."""

from __future__ import annotations

import shutil
import subprocess
import threading
from types import SimpleNamespace

import httpx
import openai
import pytest

from proxy.call import Call
from proxy.config import parse_config
from proxy.dialects import ANTHROPIC, OPENAI
from proxy.telemetry import Telemetry
from tests.servers import PROVIDER_KEY, default_config
from tests.telemetry.conftest import Scrape, exposition
from tests.waiting import wait_until

PRICES = {"gpt-4o-mini": {"input": 1.0, "output": 2.0}}


def chat(sidecar, content: str = "Hello", **kwargs):
    return sidecar.openai().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": content}], **kwargs
    )


def test_exposition_is_prometheus_text(sidecar, scrape) -> None:
    chat(sidecar)
    text, content_type = exposition(sidecar)
    assert content_type.startswith("text/plain; version=0.0.4")
    result = scrape(sidecar)
    names = result.names()
    assert all(n.startswith(("llm_sidecar_", "process_", "python_")) for n in names), names
    assert {"llm_sidecar_calls_total", "process_resident_memory_bytes", "llm_sidecar_endpoint_in_flight"} <= names
    assert "_created" not in text


def test_counters_follow_every_outcome(make_sidecar, mock_provider, scrape, refused_port) -> None:
    dead = refused_port.url
    config = default_config(mock_provider.url, telemetry={"prices": PRICES})
    config["model_groups"]["dead"] = {"endpoints": [{"name": "nowhere", "url": dead + "/v1", "api_key": PROVIDER_KEY}]}
    sidecar = make_sidecar(config=config)
    client = sidecar.openai()

    chat(sidecar)  # JSON: 20 output tokens
    list(chat(sidecar, stream=True, stream_options={"include_usage": True}))  # streamed: 20 more
    with sidecar.anthropic().messages.stream(
        model="claude-sonnet", max_tokens=100, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        stream.get_final_message()
    with pytest.raises(openai.InternalServerError):
        chat(sidecar, extra_headers={"x-mock-status": "500"})
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="dead", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model-7", messages=[{"role": "user", "content": "x"}])

    m = scrape(sidecar)
    calls = "llm_sidecar_calls_total"
    assert m.value(calls, model_group="gpt-4o-mini", outcome="upstream", status_class="2xx") == 2
    assert m.value(calls, model_group="claude-sonnet", dialect="anthropic", outcome="upstream") == 1
    assert m.value(calls, model_group="gpt-4o-mini", outcome="error", status_class="5xx") == 1
    assert m.value(calls, model_group="dead", outcome="error", status_class="5xx") == 1
    assert m.value(calls, model_group="unknown", outcome="error", status_class="4xx") == 1
    assert m.value(calls) == 6
    assert m.value("llm_sidecar_call_errors_total", model_group="unknown", error_type="not_found_error") == 1
    assert m.value("llm_sidecar_call_errors_total", model_group="dead", error_type="api_error") == 1
    assert m.value("llm_sidecar_call_duration_seconds_count") == 6
    assert m.value("llm_sidecar_overhead_seconds_count") == 6
    assert m.value("llm_sidecar_time_to_first_byte_seconds_count", stream="true") == 2
    # Tokens, streaming included; cost from the configured prices.
    assert m.value("llm_sidecar_tokens_total", model_group="gpt-4o-mini", type="output") == 40
    assert m.value("llm_sidecar_tokens_total", model_group="claude-sonnet", type="output") == 20
    spent_in = m.value("llm_sidecar_tokens_total", model_group="gpt-4o-mini", type="input")
    assert spent_in > 0
    assert m.value("llm_sidecar_cost_usd_total", model_group="gpt-4o-mini") == pytest.approx(
        (spent_in * 1.0 + 40 * 2.0) / 1e6
    )
    assert m.value("llm_sidecar_calls_in_flight") == 0
    # A model name nobody configured never becomes a label value.
    assert "no-such-model-7" not in m.text


def test_unknown_model_names_stay_out_of_labels(sidecar, scrape) -> None:
    for i in range(20):
        httpx.post(sidecar.openai_base + "/chat/completions", json={"model": f"random-{i}", "messages": []})
    m = scrape(sidecar)
    assert m.value("llm_sidecar_calls_total", model_group="unknown") == 20
    assert "random-" not in m.text


def test_live_state_during_a_stream(sidecar, mock_provider, scrape) -> None:
    mock_provider.set_behaviour("mock-gpt", chunk_delay_ms=50, chunks=20)
    done = threading.Event()

    def slow_stream() -> None:
        list(chat(sidecar, stream=True))
        done.set()

    key = {"model_group": "gpt-4o-mini", "upstream": "mock-openai"}
    thread = threading.Thread(target=slow_stream)
    thread.start()
    # The first scrape that sees the stream at its endpoint is the one checked: a later one might
    # miss it. A call is in flight from its start, but holds the endpoint's slot only once routed.
    during = wait_until(
        lambda: s if (s := scrape(sidecar)).value("llm_sidecar_endpoint_in_flight", **key) >= 1 else None,
        what="the stream holding its endpoint's slot",
    )
    thread.join(10)
    after = scrape(sidecar)
    assert during.value("llm_sidecar_calls_in_flight") == 1
    assert during.value("llm_sidecar_endpoint_in_flight", **key) == 1
    assert during.value("llm_sidecar_endpoint_slots", **key) == 64
    assert during.value("llm_sidecar_endpoint_usable", **key) == 1
    assert during.value("llm_sidecar_endpoint_healthy", **key) in (-1, 1)  # -1: not probed yet
    assert during.value("llm_sidecar_endpoint_circuit_state", state="closed", **key) == 1
    assert after.value("llm_sidecar_endpoint_in_flight", **key) == 0
    assert after.value("llm_sidecar_calls_in_flight") == 0


def test_each_app_has_its_own_registry(make_sidecar, scrape) -> None:
    first, second = make_sidecar(), make_sidecar()
    chat(first)
    chat(first)
    chat(second)
    assert scrape(first).value("llm_sidecar_calls_total") == 2
    assert scrape(second).value("llm_sidecar_calls_total") == 1


def test_metrics_off(make_sidecar) -> None:
    sidecar = make_sidecar(telemetry={"metrics": False})
    chat(sidecar)
    assert exposition(sidecar)[0] == ""


def _ended_call(outcome: str, usage: dict[str, int], dialect=OPENAI, group: str = "gpt-4o-mini") -> Call:
    call = Call(None, dialect, dialect.operations[next(iter(dialect.operations))], "req-1")
    call.model_group, call.outcome, call.usage, call.status = group, outcome, usage, 200
    call.cache_status = {"cached": "hit", "coalesced": "coalesced"}.get(outcome, "miss")
    call.attempt_log = [("mock-openai", 503, 0.2, "api_error"), ("mock-openai-2", 200, 0.5, None)]
    call.attempts, call.fallbacks, call.retries, call.queue_wait, call.upstream_seconds = 2, 1, 1, 0.01, 0.7
    return call


def test_saved_tokens_attempts_and_fallbacks_from_the_call() -> None:
    """Outcomes the router and cache produce, recorded from the Call's fields alone."""
    config = parse_config(default_config("http://127.0.0.1:1", telemetry={"prices": PRICES}))
    telemetry = Telemetry(config.telemetry)
    telemetry.bind(config.model_groups, router=SimpleNamespace(endpoints=lambda: []), cache=None)
    for outcome in ("cached", "coalesced", "upstream"):
        call = _ended_call(outcome, {"input_tokens": 10, "output_tokens": 100})
        telemetry.observe(call)
        telemetry.metrics.record(call, call.started + 1.0)
    m = Scrape(telemetry.exposition()[0].decode())
    assert m.value("llm_sidecar_cache_saved_tokens_total", model_group="gpt-4o-mini", type="output") == 200
    assert m.value("llm_sidecar_cache_saved_cost_usd_total") == pytest.approx(2 * (10 + 200) / 1e6)
    assert m.value("llm_sidecar_tokens_total", type="output") == 100
    assert m.value("llm_sidecar_cache_calls_total", cache_status="hit") == 1
    assert (
        m.value("llm_sidecar_upstream_attempt_duration_seconds_count", upstream="mock-openai", status_class="5xx") == 3
    )
    assert (
        m.value("llm_sidecar_upstream_attempt_duration_seconds_count", upstream="mock-openai-2", status_class="2xx")
        == 3
    )
    assert m.value("llm_sidecar_fallbacks_total") == 3
    assert m.value("llm_sidecar_retries_total") == 3
    assert m.value("llm_sidecar_overhead_seconds_sum") == pytest.approx(3 * 0.3)
    assert m.value("llm_sidecar_queue_wait_seconds_count") == 3


def test_step_timings_and_events_are_bounded() -> None:
    config = parse_config(default_config("http://127.0.0.1:1"))
    telemetry = Telemetry(config.telemetry)
    observer = telemetry.observe(_ended_call("upstream", {}, ANTHROPIC, "claude-sonnet"))
    with observer.span("cache.lookup"):
        pass
    with observer.span("/some/path?user=1"):
        pass
    observer.event("fallback", endpoint="x")
    observer.event("user-42")
    m = Scrape(telemetry.exposition()[0].decode())
    assert m.value("llm_sidecar_step_duration_seconds_count", step="cache.lookup") == 1
    assert m.value("llm_sidecar_step_duration_seconds_count", step="other") == 1
    assert m.value("llm_sidecar_call_events_total", event="fallback") == 1
    assert m.value("llm_sidecar_call_events_total", event="other") == 1
    assert "user-42" not in m.text and "/some/path" not in m.text


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus provides it)"
)
def test_promtool_check_metrics(sidecar, mock_provider) -> None:
    chat(sidecar)
    list(chat(sidecar, stream=True, stream_options={"include_usage": True}))
    text, _ = exposition(sidecar)
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_fallback_and_cache_hit_move_their_counters(make_sidecar, mock_provider, scrape, refused_port) -> None:
    dead = refused_port.url + "/v1"
    config = default_config(mock_provider.url)
    config["model_groups"]["gpt-4o-mini"] = {
        "endpoints": [
            {"name": "dead", "url": dead, "api_key": PROVIDER_KEY, "priority": 0},
            {
                "name": "mock-openai",
                "url": f"{mock_provider.url}/v1",
                "model": "mock-gpt",
                "api_key": PROVIDER_KEY,
                "priority": 1,
            },
        ]
    }
    sidecar = make_sidecar(config=config)
    first = chat(sidecar, "cache me", temperature=0)
    again = chat(sidecar, "cache me", temperature=0)
    assert again.choices[0].message.content == first.choices[0].message.content
    m = scrape(sidecar)
    group = {"model_group": "gpt-4o-mini"}
    assert m.value("llm_sidecar_fallbacks_total", **group) == 1
    assert m.value("llm_sidecar_upstream_attempt_duration_seconds_count", upstream="dead", status_class="none") == 1
    assert (
        m.value("llm_sidecar_upstream_attempt_duration_seconds_count", upstream="mock-openai", status_class="2xx") == 1
    )
    assert m.value("llm_sidecar_call_events_total", event="fallback") == 1
    assert m.value("llm_sidecar_calls_total", outcome="upstream", **group) == 1
    assert m.value("llm_sidecar_calls_total", outcome="cached", **group) == 1
    assert m.value("llm_sidecar_cache_calls_total", cache_status="hit", **group) == 1
    assert m.value("llm_sidecar_cache_calls_total", cache_status="miss", **group) == 1
    assert m.value("llm_sidecar_cache_events_total", event="hit") == 1
    assert m.value("llm_sidecar_cache_events_total", event="store") == 1
    assert m.value("llm_sidecar_cache_entries") == 1
    assert m.value("llm_sidecar_cache_bytes") > 0
    assert m.value("llm_sidecar_step_duration_seconds_count", step="cache.lookup") == 2
    assert m.value("llm_sidecar_step_duration_seconds_count", step="upstream.attempt") == 2
    # Only the answered call spent tokens upstream.
    assert m.value("llm_sidecar_tokens_total", type="output", **group) == 20
