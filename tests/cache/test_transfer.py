"""``llm-sidecar cache export`` / ``cache import`` (the console script) and ``cache.preload``, on a real redis-server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
import yaml

from tests.cache.conftest import cache_config, redis_cache, stored
from tests.servers import LLM_SIDECAR, SidecarProcess


def _ask(sidecar, text: str) -> str:
    """One call through the SDK; the cache status the sidecar answered with."""
    raw = sidecar.openai().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
    )
    return raw.headers["x-llm-sidecar-cache"]


def _config_file(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([LLM_SIDECAR, "cache", *args], input=stdin, capture_output=True, timeout=120)


def test_export_then_import_into_an_empty_redis_answers_from_the_cache(
    cached_sidecar, mock_provider, redis, tmp_path
) -> None:
    sidecar = cached_sidecar(cache=redis_cache(redis.url), ttl=600)
    for index in range(5):
        assert _ask(sidecar, f"warm {index}") == "miss"
    stored(sidecar, 5)
    config = _config_file(tmp_path, cache_config(mock_provider.url, redis_cache(redis.url)))
    dump = tmp_path / "cache.jsonl"

    exported = _cli("export", "--config", str(config), "--output", str(dump))

    assert exported.returncode == 0, exported.stderr
    assert exported.stderr.decode().strip() == "exported 5 entries"
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(lines) == 5 and all(0 < line["ttl"] <= 600 for line in lines)
    assert all(line["key"].startswith("llmsc:default:") for line in lines)

    redis.flush()
    imported = _cli("import", "--config", str(config), stdin=dump.read_bytes())  # from stdin

    assert imported.returncode == 0, imported.stderr
    assert imported.stderr.decode().strip() == "imported 5 entries (0 expired, skipped)"
    client = redis_py.Redis.from_url(redis.url)
    ttls = {line["key"]: line["ttl"] for line in lines}
    assert all(0 < client.pttl(key) / 1000 <= ttls[key] for key in ttls)  # the time left, not a fresh TTL
    other = cached_sidecar(cache=redis_cache(redis.url, local_ttl=0))
    calls = mock_provider.calls()
    assert [_ask(other, f"warm {index}") for index in range(5)] == ["hit"] * 5
    assert mock_provider.calls() == calls


def test_import_skips_expired_entries_and_names_a_bad_line(mock_provider, redis, tmp_path) -> None:
    config = _config_file(tmp_path, cache_config(mock_provider.url, redis_cache(redis.url)))
    live = {"key": "llmsc:default:aa", "value": "aGk=", "ttl": 60, "expires_at": time.time() + 60}
    gone = {"key": "llmsc:default:bb", "value": "aGk=", "ttl": 60, "expires_at": time.time() - 1}
    good = (json.dumps(live) + "\n" + json.dumps(gone) + "\n").encode()

    result = _cli("import", "--config", str(config), stdin=good)
    assert result.stderr.decode().strip() == "imported 1 entries (1 expired, skipped)"
    assert redis_py.Redis.from_url(redis.url).get("llmsc:default:aa") == b"hi"

    bad = _cli("import", "--config", str(config), stdin=good + b'{"key": "llmsc:default:cc"}\n')
    assert bad.returncode == 2
    assert bad.stderr.decode().strip() == "llm-sidecar: -: line 3: not a cache entry ('value')"


def test_export_streams_in_bounded_memory(mock_provider, redis, tmp_path) -> None:
    """128 MB of entries go out through a process that never holds more than a batch of them."""
    client = redis_py.Redis.from_url(redis.url)
    value = b"x" * 16384
    for start in range(0, 8000, 1000):
        pipe = client.pipeline(transaction=False)
        for index in range(start, start + 1000):
            pipe.set(f"llmsc:default:{index:040x}", value, px=600_000)
        pipe.execute()
    config = _config_file(tmp_path, cache_config(mock_provider.url, redis_cache(redis.url)))
    # Peak RSS of the export alone: measured by a parent of its own.
    measure = (
        "import resource, subprocess, sys; "
        "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE); "
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.stderr.decode().strip())"
    )
    out = subprocess.run(
        [sys.executable, "-c", measure, LLM_SIDECAR, "cache", "export", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.split(maxsplit=2)
    code, peak_kb, summary = int(out[0]), int(out[1]), out[2].strip()
    print(f"export of 8000 entries (128 MiB): peak RSS {peak_kb / 1024:.0f} MiB")
    assert code == 0 and summary == "exported 8000 entries"
    assert peak_kb < 110 * 1024  # the entries alone are 128 MiB


def test_a_memory_cache_is_exported_by_no_one(mock_provider, tmp_path) -> None:
    config = _config_file(tmp_path, cache_config(mock_provider.url))
    result = _cli("export", "--config", str(config))
    assert result.returncode == 2
    assert b"works on a shared Redis (cache.backend: redis)" in result.stderr


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_preload_starts_a_new_sidecar_warm(cached_sidecar, mock_provider, redis, tmp_path, backend) -> None:
    sidecar = cached_sidecar(cache=redis_cache(redis.url))
    for index in range(3):
        _ask(sidecar, f"preload {index}")
    stored(sidecar, 3)
    config_file = _config_file(tmp_path, cache_config(mock_provider.url, redis_cache(redis.url)))
    dump = tmp_path / "cache.jsonl"
    assert _cli("export", "--config", str(config_file), "--output", str(dump)).returncode == 0
    redis.flush()

    # A generous operation timeout: what is tested is the preload, not how a slow Redis fails open.
    cache = {"backend": "memory"} if backend == "memory" else redis_cache(redis.url, operation_timeout=2.0)
    config = cache_config(mock_provider.url, {**cache, "preload": str(dump)})
    warm = SidecarProcess(config, tmp_path)
    try:
        calls = mock_provider.calls()
        for index in range(3):
            raw = _ask_process(warm, f"preload {index}")
            assert raw == "hit"
        assert mock_provider.calls() == calls
        (loaded,) = [e for e in warm.events() if e["msg"] == "cache preloaded"]
        assert loaded["stored"] == 3 and loaded["skipped"] == 0
    finally:
        warm.stop()


def _ask_process(sidecar: SidecarProcess, text: str) -> str:
    import openai

    client = openai.OpenAI(base_url=sidecar.url + "/v1", api_key="sk-client", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
    )
    return raw.headers["x-llm-sidecar-cache"]


def test_export_from_a_redis_cluster_reaches_every_master(cached_sidecar, mock_provider, redis_cluster, tmp_path):
    sidecar = cached_sidecar(cache=redis_cache(redis_cluster.url, redis_mode="cluster"))
    for index in range(12):
        _ask(sidecar, f"sharded {index}")
    stored(sidecar, 12)
    config = _config_file(
        tmp_path, cache_config(mock_provider.url, redis_cache(redis_cluster.url, redis_mode="cluster"))
    )
    result = _cli("export", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) >= 12


@pytest.mark.parametrize(
    "when, why",
    [
        ('"expires_at": "soon"', "expires_at: not a number of seconds"),
        ('"expires_at": [1]', "expires_at: not a number of seconds"),
        ('"ttl": "nan"', "ttl: not a number of seconds"),
        ('"ttl": 1e300', "ttl: not a number of seconds"),
    ],
    ids=["expires_at-a-word", "expires_at-a-list", "ttl-nan", "ttl-past-redis"],
)
def test_an_entry_whose_time_is_not_a_number_is_a_bad_line(mock_provider, redis, tmp_path, when, why) -> None:
    # These raised out of the reader (a traceback, exit 1), or reached Redis as a PX it refused.
    config = _config_file(tmp_path, cache_config(mock_provider.url, redis_cache(redis.url)))
    line = '{"key": "llmsc:default:aa", "value": "aGk=", ' + when + "}\n"
    result = _cli("import", "--config", str(config), stdin=line.encode())
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [f"llm-sidecar: -: line 1: not a cache entry ({why})"]


def test_a_preload_file_whose_time_is_not_a_number_starts_the_sidecar_cold(mock_provider, tmp_path) -> None:
    # "A missing or bad file is logged and the sidecar starts cold": this one raised out of the
    # reader, a ValueError preload did not catch, and serve exited at start with a traceback.
    dump = tmp_path / "cache.jsonl"
    dump.write_text('{"key": "llmsc:default:aa", "value": "aGk=", "expires_at": "soon"}\n')
    sidecar = SidecarProcess(cache_config(mock_provider.url, {"backend": "memory", "preload": str(dump)}), tmp_path)
    try:
        (failed,) = [e for e in sidecar.events() if e["msg"] == "cache preload failed"]
        assert failed["error"] == "line 1: not a cache entry (expires_at: not a number of seconds)"
        assert _ask_process(sidecar, "cold") == "miss"
    finally:
        sidecar.stop()


@pytest.mark.parametrize(
    "args, why",
    [
        (["import", "--input", "{tmp}/missing.jsonl"], "cannot read {tmp}/missing.jsonl: No such file or directory"),
        (["import", "--input", "{tmp}"], "cannot read {tmp}: Is a directory"),
        (["export", "--output", "{tmp}/no/dir.jsonl"], "cannot write {tmp}/no/dir.jsonl: No such file or directory"),
    ],
    ids=["missing-input", "input-a-directory", "output-in-no-directory"],
)
def test_a_file_that_cannot_be_opened_is_a_usage_error(mock_provider, redis, tmp_path, args, why) -> None:
    # Exit 2 and one line, as a bad line or a bad config is; it was 1, as a Redis that fails is.
    config = _config_file(tmp_path, cache_config(mock_provider.url, redis_cache(redis.url)))
    result = _cli(*[arg.format(tmp=tmp_path) for arg in args], "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [f"llm-sidecar: cache {args[0]}: {why.format(tmp=tmp_path)}"]


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:hunter2", "redis://:hunter2@127.0.0.1:99999/0", "rediss://[::1", "redis://h?db=x"]
)
def test_a_redis_url_redis_py_cannot_read_is_a_config_error(mock_provider, tmp_path, url) -> None:
    # It passed check-config, and the cache commands died on it with a traceback (exit 1); the
    # message is not urllib's, which repeats a password typed where the port goes.
    config = _config_file(tmp_path, cache_config(mock_provider.url, redis_cache(url)))
    for command in (["check-config", str(config)], ["cache", "export", "-c", str(config)]):
        result = subprocess.run([LLM_SIDECAR, *command], capture_output=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert result.stderr.decode().splitlines() == [
            "llm-sidecar: invalid config:",
            "  cache.redis_url: redis-py cannot read it (a port not from 0 to 65535, an IPv6 host's brackets, "
            "a query option's value)",
        ]
