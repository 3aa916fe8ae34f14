"""A client that leaves is a ``cancelled`` call, not an ``error``: in /metrics, in the access line, nowhere an error."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.cache.conftest import cache_config
from tests.servers import Sidecar, default_config
from tests.telemetry.test_logs import logs  # noqa: F401  (a fixture, re-exported)
from tests.waiting import wait_until

HELLO = [{"role": "user", "content": "hello"}]


def one_slot(mock_url: str) -> dict[str, Any]:
    """``gpt-4o-mini`` on one endpoint that takes one call at a time."""
    config = default_config(mock_url)
    config["model_groups"]["gpt-4o-mini"]["endpoints"][0]["max_concurrent"] = 1
    return config


def test_a_client_that_leaves_is_cancelled_not_an_error(make_sidecar, mock_provider, scrape, logs) -> None:  # noqa: F811
    """Three clients leave: mid-stream, while queued for the endpoint's one slot, before the first byte."""
    sidecar: Sidecar = make_sidecar(config=one_slot(mock_provider.url))
    client = sidecar.openai()
    impatient = client.with_options(timeout=0.5)
    ended = lambda count: lambda: len(logs.access()) == count  # noqa: E731

    # A slow stream holds the one slot; its client reads a chunk and goes on waiting.
    holder = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        stream=True,
        extra_headers={"x-mock-chunk-delay-ms": "200", "x-mock-chunks": "100"},
    )
    assert next(iter(holder)).choices[0].delta is not None
    # Queued behind it, a client gives up.
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    wait_until(ended(1), what="the queued call's access line")
    # The stream's client stops reading ("stop generating") and closes its connection.
    holder.close()
    wait_until(ended(2), what="the stream's access line")
    # A client gives up before the answer's first byte.
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, extra_headers={"x-mock-latency-ms": "1500"}
        )
    wait_until(ended(3), what="the unanswered call's access line")

    lines = logs.access()
    assert [(line["outcome"], line["error_type"]) for line in lines] == [("cancelled", None)] * 3
    assert lines[1]["status"] == 200 and lines[1]["stream"] is True  # the stream had begun
    # The queued call waited from its arrival until its client gave up (0.5 s): that is its queue wait.
    assert lines[0]["queue_ms"] >= 250 and lines[0]["attempts"] == 0
    m = scrape(sidecar)
    calls = "llm_sidecar_calls_total"
    assert m.value(calls, model_group="gpt-4o-mini", outcome="cancelled") == 3
    assert m.value(calls, outcome="error") == 0
    assert m.value("llm_sidecar_call_errors_total") == 0
    assert m.value("llm_sidecar_call_duration_seconds_count", outcome="cancelled") == 3
    # The wait is in the queue histogram too: the queued call's, and the others' (none).
    assert m.value("llm_sidecar_queue_wait_seconds_count", model_group="gpt-4o-mini") == 3
    assert m.value("llm_sidecar_queue_wait_seconds_sum", model_group="gpt-4o-mini") >= 0.25
    # The provider's side of the abandoned calls ends too (none left running past the test).
    wait_until(lambda: not any(mock_provider.stats()["in_flight"].values()), what="the mock's calls to end")


def test_a_coalesced_follower_whose_client_leaves_is_cancelled(make_sidecar, mock_provider, scrape, logs) -> None:  # noqa: F811
    """The follower's client leaves mid-stream: it is cancelled, the leader's call goes on to its end."""
    mock_provider.set_behaviour("mock-gpt", chunk_delay_ms=100, chunks=15)
    sidecar: Sidecar = make_sidecar(config=cache_config(mock_provider.url))
    cache = sidecar.pipeline.cache
    ask = dict(model="gpt-4o-mini", messages=HELLO, stream=True)
    leader = sidecar.openai().chat.completions.create(**ask)
    chunks = iter(leader)
    next(chunks)
    wait_until(lambda: cache.flights, what="the leader's call in flight")
    follower = sidecar.openai().chat.completions.with_raw_response.create(**ask)
    assert follower.headers["x-llm-sidecar-cache"] == "coalesced"
    next(iter(follower.parse()))
    follower.http_response.close()
    wait_until(lambda: len(logs.access()) == 1, what="the follower's access line")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)  # the leader's answer goes on
    wait_until(lambda: len(logs.access()) == 2, what="the leader's access line")

    follower_line, leader_line = logs.access()
    assert (follower_line["outcome"], follower_line["cache"], follower_line["error_type"]) == (
        "cancelled",
        "coalesced",
        None,
    )
    assert (leader_line["outcome"], leader_line["error_type"]) == ("upstream", None)
    m = scrape(sidecar)
    assert m.value("llm_sidecar_calls_total", outcome="cancelled") == 1
    assert m.value("llm_sidecar_call_errors_total") == 0
