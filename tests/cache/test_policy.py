"""What is cached, for whom, and for how long: policy, Cache-Control, tenants, byte bound."""

from __future__ import annotations

import time

import httpx
import pytest

from proxy.cache import response_cache
from proxy.cache.entry import Entry
from proxy.cache.keys import request_key, tenant
from proxy.cache.memory import MemoryBackend
from tests.cache.conftest import settled, stored
from tests.servers import Sidecar


def _post(sidecar: Sidecar, content: str = "policy", headers: dict | None = None, **body) -> httpx.Response:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **body}
    return httpx.post(sidecar.openai_base + "/chat/completions", json=payload, headers=headers or {}, timeout=10)


def test_key_ignores_order_whitespace_and_non_answer_fields() -> None:
    a = {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0}
    b = {
        "temperature": 0.0,
        "stream": True,
        "user": "u1",
        "metadata": {"a": 1},
        "stream_options": {},
        "messages": [{"content": "x", "role": "user"}],
        "model": "m",
    }
    assert request_key("t", "s", a) == request_key("t", "s", b)
    assert request_key("t", "s", a) != request_key("t", "s", {**a, "temperature": 0.5})
    assert request_key("t", "s", a) != request_key("t", "s", {**a, "tools": [{"type": "function"}]})
    assert request_key("t", "s", a) != request_key("t2", "s", a)


def test_tenant_hashes_the_credential() -> None:
    secret = "sk-live-very-secret-0123456789"
    name = tenant("ns", secret, per_credential=True)
    assert secret not in name and "very-secret" not in name
    assert name != tenant("ns", "sk-other", per_credential=True)
    assert tenant("ns", secret, per_credential=False) == "ns"


def test_deterministic_policy_caches_only_temperature_zero_or_seed(cached_sidecar, mock_provider) -> None:
    sidecar = cached_sidecar(mode="deterministic")
    assert _post(sidecar).headers["x-llm-sidecar-cache"] == "bypass"
    assert _post(sidecar).headers["x-llm-sidecar-cache"] == "bypass"
    assert _post(sidecar, temperature=0).headers["x-llm-sidecar-cache"] == "miss"
    assert _post(sidecar, temperature=0).headers["x-llm-sidecar-cache"] == "hit"
    assert _post(sidecar, seed=7, temperature=1).headers["x-llm-sidecar-cache"] == "miss"
    assert mock_provider.calls() == 4


def test_policy_off(cached_sidecar, mock_provider) -> None:
    sidecar = cached_sidecar(mode="off")
    for _ in range(2):
        assert _post(sidecar).headers["x-llm-sidecar-cache"] == "bypass"
    assert mock_provider.calls() == 2


def test_no_cache_skips_lookup_but_stores(cached_sidecar, mock_provider) -> None:
    sidecar = cached_sidecar()
    first = _post(sidecar)
    fresh = _post(sidecar, headers={"Cache-Control": "no-cache"})
    assert fresh.headers["x-llm-sidecar-cache"] == "bypass"
    assert mock_provider.calls() == 2
    hit = _post(sidecar)
    assert hit.headers["x-llm-sidecar-cache"] == "hit"
    assert hit.json()["id"] == fresh.json()["id"] != first.json()["id"]  # the no-cache answer replaced it


def test_no_store_is_not_stored(cached_sidecar, mock_provider) -> None:
    sidecar = cached_sidecar()
    assert _post(sidecar, headers={"Cache-Control": "no-store"}).headers["x-llm-sidecar-cache"] == "miss"
    settled(sidecar)
    assert _post(sidecar).headers["x-llm-sidecar-cache"] == "miss"
    assert mock_provider.calls() == 2


def test_max_age_and_age_header(cached_sidecar, mock_provider, clock) -> None:
    sidecar = cached_sidecar(clock=clock)
    _post(sidecar)
    stored(sidecar)
    clock.advance(1.1)
    hit = _post(sidecar, headers={"Cache-Control": "max-age=60"})
    assert hit.headers["x-llm-sidecar-cache"] == "hit" and int(hit.headers["Age"]) >= 1
    assert _post(sidecar, headers={"Cache-Control": "max-age=0"}).headers["x-llm-sidecar-cache"] == "miss"
    assert mock_provider.calls() == 2


def test_ttl_policy_and_ttl_header(cached_sidecar, mock_provider, clock) -> None:
    sidecar = cached_sidecar(ttl=0.5, clock=clock)
    _post(sidecar, "short")
    _post(sidecar, "long", headers={"x-llm-sidecar-cache-ttl": "60"})
    stored(sidecar, 2)
    assert _post(sidecar, "short").headers["x-llm-sidecar-cache"] == "hit"
    clock.advance(0.7)
    assert _post(sidecar, "short").headers["x-llm-sidecar-cache"] == "miss"
    assert _post(sidecar, "long").headers["x-llm-sidecar-cache"] == "hit"
    assert mock_provider.calls() == 3


def test_a_ttl_header_of_zero_keeps_nothing(cached_sidecar, mock_provider) -> None:
    # "Store this answer for 0 seconds": not the policy's hour.
    sidecar = cached_sidecar(ttl=3600)
    zero = {"x-llm-sidecar-cache-ttl": "0"}
    assert _post(sidecar, "zero", headers=zero).headers["x-llm-sidecar-cache"] == "miss"
    settled(sidecar)
    assert _post(sidecar, "zero").headers["x-llm-sidecar-cache"] == "miss"
    assert mock_provider.calls() == 2


def test_tenants_never_share_an_entry(cached_sidecar, mock_provider) -> None:
    sidecar = cached_sidecar(pass_through=True)

    def ask(key: str) -> str:
        return _post(sidecar, headers={"Authorization": f"Bearer {key}"}).headers["x-llm-sidecar-cache"]

    assert [ask("sk-tenant-a"), ask("sk-tenant-b"), ask("sk-tenant-a"), ask("sk-tenant-b")] == [
        "miss",
        "miss",
        "hit",
        "hit",
    ]
    assert mock_provider.calls() == 2


def test_keys_remembered_for_repeated_bodies_are_bounded_per_tenant_and_hold_no_credential(
    cached_sidecar, mock_provider, monkeypatch
) -> None:
    monkeypatch.setattr(response_cache, "_KEYS_KEPT", 3)
    sidecar = cached_sidecar(pass_through=True)
    secret = "sk-secret-tenant-key-1234567890"

    def ask(content: str, key: str = secret) -> str:
        return _post(sidecar, content, headers={"Authorization": f"Bearer {key}"}).headers["x-llm-sidecar-cache"]

    assert [ask(content) for content in "abcde"] == ["miss"] * 5
    stored(sidecar, 5)
    memo = sidecar.pipeline.cache._keys
    assert len(memo) == 3
    assert all(secret not in name and secret.encode() not in body for name, _, body in memo)
    assert ask("a") == "hit"  # forgotten by the memo, its key is worked out again
    assert ask("e") == "hit"  # remembered
    assert ask("e", "sk-another-tenant") == "miss"  # the same body for another caller
    assert mock_provider.calls() == 6


def test_a_compressed_entry_is_decoded_once_and_a_refreshed_one_replaces_it(cached_sidecar, mock_provider) -> None:
    sidecar = cached_sidecar(cache={"compress_threshold": 64})
    status = "x-llm-sidecar-cache"
    first = _post(sidecar, "long")
    stored(sidecar)
    hits = [_post(sidecar, "long") for _ in range(2)]
    assert [hit.headers[status] for hit in hits] == ["hit", "hit"]
    assert hits[0].json() == hits[1].json() == first.json()
    assert len(sidecar.pipeline.cache._unpacked_entries) == 1
    refreshed = _post(sidecar, "long", headers={"Cache-Control": "no-cache"})  # stores its answer anew
    assert refreshed.json()["id"] != first.json()["id"]
    stored(sidecar, 2)
    again = _post(sidecar, "long")
    assert again.headers[status] == "hit" and again.json() == refreshed.json()
    assert mock_provider.calls() == 2


def test_only_complete_2xx_answers_are_stored(cached_sidecar, mock_provider) -> None:
    sidecar = cached_sidecar()
    assert _post(sidecar, headers={"x-mock-status": "400"}).status_code == 400
    assert _post(sidecar).headers["x-llm-sidecar-cache"] == "miss"
    cut = {"stream": True}
    with httpx.stream(
        "POST",
        sidecar.openai_base + "/chat/completions",
        timeout=10,
        headers={"x-mock-cut-after": "3"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "cut"}], **cut},
    ) as r:
        r.read()
    settled(sidecar)
    assert _post(sidecar, "cut", stream=True).headers["x-llm-sidecar-cache"] == "miss"


def test_entries_larger_than_the_policy_limit_are_not_stored(cached_sidecar, mock_provider) -> None:
    sidecar = cached_sidecar(max_entry_bytes=200)
    _post(sidecar)
    settled(sidecar)
    assert _post(sidecar).headers["x-llm-sidecar-cache"] == "miss"


def test_stale_if_error_serves_an_expired_entry(cached_sidecar, mock_provider, clock) -> None:
    sidecar = cached_sidecar(ttl=0.3, stale_if_error=60, clock=clock)
    first = _post(sidecar)
    stored(sidecar)
    clock.advance(0.5)
    mock_provider.set_behaviour("mock-gpt", status=503)
    stale = _post(sidecar)
    assert stale.status_code == 200 and stale.headers["x-llm-sidecar-cache"] == "stale"
    assert stale.json() == first.json()
    # Without the window the error goes through.
    other = cached_sidecar(ttl=0.3, clock=clock)
    mock_provider.set_behaviour("mock-gpt", status=0)
    _post(other, "no window")
    stored(other)
    clock.advance(0.5)
    mock_provider.set_behaviour("mock-gpt", status=503)
    assert _post(other, "no window").status_code == 503


@pytest.mark.parametrize(
    ("failure", "then"),
    [
        ({"status": 503}, "every endpoint of model group `gpt-4o-mini` is unhealthy or its circuit is open"),
        ({"status": 429, "retry_after": 60}, "every endpoint of model group `gpt-4o-mini` is rate limited"),
    ],
)
def test_stale_if_error_outlasts_the_first_failure(cached_sidecar, mock_provider, clock, failure, then) -> None:
    # The provider keeps failing: after the first failed call the router skips the endpoint (its
    # circuit open, or resting after a 429) and answers 503 or 429 itself, without calling it.
    # Those are failures of every upstream too: the expired entry goes on answering.
    router = {"max_attempts": 1, "circuit": {"failures": 1, "open_for": 60}, "health": {"enabled": False}}
    sidecar = cached_sidecar(ttl=0.3, stale_if_error=60, clock=clock, router=router)
    first = _post(sidecar)
    stored(sidecar)
    clock.advance(0.5)
    mock_provider.set_behaviour("mock-gpt", **failure)
    answers = [_post(sidecar) for _ in range(3)]
    assert [(a.status_code, a.headers["x-llm-sidecar-cache"]) for a in answers] == [(200, "stale")] * 3
    assert all(a.json() == first.json() for a in answers)
    assert mock_provider.calls() == 2  # the first call's and the failed one: the router skips it after
    # Without the window the caller gets the upstream's failure, then the router's own answer.
    other = cached_sidecar(ttl=0.3, clock=clock, router=router)
    assert _post(other, "no window").json()["error"]["message"] == f"mock error {failure['status']}"
    assert _post(other, "no window").json()["error"]["message"] == then


def test_memory_bound_counts_compressed_bytes_and_evicts_lru() -> None:
    backend = MemoryBackend(max_bytes=20_000)
    body = b'{"text": "' + b"compressible " * 2000 + b'"}'  # ~26 kB raw, far less compressed
    entry = Entry(200, "application/json", body, False, time.time(), 60)
    value = entry.encode(compress_threshold=1024)
    assert len(value) < len(body) // 10
    for index in range(200):
        backend.set_now(f"k{index}", value, 60)
        backend.get_now("k0")  # k0 stays recently used
    assert backend.bytes <= 20_000
    assert backend.get_now("k0") is not None and backend.get_now("k1") is None
    assert backend.evictions > 0
    assert Entry.decode(backend.get_now("k199")).body == body


def test_memory_entries_expire(clock) -> None:
    backend = MemoryBackend(clock=clock)
    backend.set_now("k", b"r1", 0.05)
    clock.advance(0.04)
    assert backend.get_now("k") == b"r1"
    clock.advance(0.02)
    assert backend.get_now("k") is None and backend.bytes == 0


def test_eviction_through_the_proxy(cached_sidecar, mock_provider) -> None:
    sidecar = cached_sidecar(cache={"backend": "memory", "max_bytes": 2000})  # room for about 3 answers
    for index in range(10):
        _post(sidecar, f"question {index}")
    stored(sidecar, 10)
    assert _post(sidecar, "question 9").headers["x-llm-sidecar-cache"] == "hit"
    assert _post(sidecar, "question 0").headers["x-llm-sidecar-cache"] == "miss"
    cache = sidecar.pipeline.cache
    snapshot = cache.snapshot()
    assert snapshot["bytes"] <= 2000 and snapshot["hits"] >= 1 and snapshot["output_tokens_saved"] > 0


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_no_secret_in_keys_or_values(cached_sidecar, mock_provider, dialect) -> None:
    sidecar = cached_sidecar(pass_through=True)
    secret = "sk-secret-tenant-key-9876543210"
    if dialect == "openai":
        httpx.post(
            sidecar.openai_base + "/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "s"}]},
        )
    else:
        httpx.post(
            sidecar.anthropic_base + "/v1/messages",
            headers={"x-api-key": secret},
            json={"model": "claude-sonnet", "max_tokens": 5, "messages": [{"role": "user", "content": "s"}]},
        )
    stored(sidecar)
    backend = sidecar.pipeline.cache.backend
    items = list(backend._items.items())
    assert items
    for key, (value, _) in items:
        # What the backend holds: packed bytes, or an entry kept decoded (checked as its bytes).
        held = value.encode(compress_threshold=1 << 30) if isinstance(value, Entry) else value
        assert secret not in key and secret.encode() not in held


def test_ttl_header_must_be_a_finite_number() -> None:
    from multidict import CIMultiDict, CIMultiDictProxy

    from proxy.cache.directives import MAX_SECONDS, parse_directives

    def ttl(value: str) -> float | None:
        return parse_directives(CIMultiDictProxy(CIMultiDict({"x-llm-sidecar-cache-ttl": value}))).ttl

    assert ttl("30") == 30
    assert ttl("inf") is None and ttl("nan") is None and ttl("-5") is None and ttl("soon") is None
    assert ttl("1e20") == MAX_SECONDS


def test_in_cluster_server_knobs_split_the_key() -> None:
    from proxy.cache.keys import request_key

    base = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    keys = {
        request_key("t", "s", {**base, **extra})
        for extra in ({}, {"guided_json": {"type": "object"}}, {"min_p": 0.1}, {"options": {"num_ctx": 4096}})
    }
    assert len(keys) == 4
    assert request_key("t", "s", {**base, "user": "u1", "stream": True}) == request_key("t", "s", base)


@pytest.mark.parametrize("value_size", [64, 300, 2_000, 20_000])
def test_memory_accounting_is_within_20_percent_of_what_the_entries_take(value_size: int) -> None:
    import hashlib
    import os
    import tracemalloc

    backend = MemoryBackend(max_bytes=1 << 40)
    count = 2_000 if value_size < 20_000 else 300
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(count):  # keys shaped like the response cache's
            backend.set_now("llmsc:v1:" + hashlib.sha256(b"%d" % index).hexdigest(), os.urandom(value_size), 60)
        measured = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.8 <= backend.bytes / measured <= 1.2, f"counted {backend.bytes}, measured {measured}"


@pytest.mark.parametrize("body_size", [64, 300, 4_000])
def test_entries_kept_decoded_count_at_least_what_they_take(body_size: int) -> None:
    import hashlib
    import os
    import tracemalloc

    backend = MemoryBackend(max_bytes=1 << 40)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(2_000):  # what the response cache keeps for an uncompressed answer
            entry = Entry(200, "application/json", os.urandom(body_size), False, time.time(), 60, 1000 + index, 2000)
            key = "llmsc:v1:" + hashlib.sha256(b"%d" % index).hexdigest()
            assert backend.set_now(key, entry.keepable(entry.encode(compress_threshold=4096)), 60)
        measured = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.95 * measured <= backend.bytes <= 1.4 * measured, f"counted {backend.bytes}, measured {measured}"
