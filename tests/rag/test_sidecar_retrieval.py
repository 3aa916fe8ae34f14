"""Retrieval inside a running sidecar: /v1/retrieve and context injection before routing."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.servers import PROVIDER_KEY


def corpus(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "asyncio.md").write_text("Python的asyncio库提供事件循环和协程，适合编写异步网络程序。")
    (docs / "redis.md").write_text("Redis is an in-memory data store used as a cache and message broker.")
    (docs / "helm.txt").write_text("Helm charts package Kubernetes manifests with templated values.")
    return docs


def retrieval_sidecar(make_sidecar, mock_provider, tmp_path: Path):
    groups = {
        "gpt-4o-mini": {
            "context": {"corpus": "kb", "top_k": 1},
            "endpoints": [
                {"name": "m", "url": mock_provider.url + "/v1", "model": "mock-gpt", "api_key": PROVIDER_KEY}
            ],
        },
        "plain": {"endpoints": [{"name": "p", "url": mock_provider.url + "/v1", "api_key": PROVIDER_KEY}]},
    }
    return make_sidecar(model_groups=groups, retrieval={"corpora": {"kb": str(corpus(tmp_path))}, "reload_interval": 0})


def test_retrieve_streams_ndjson_best_first(make_sidecar, mock_provider, tmp_path: Path) -> None:
    sidecar = retrieval_sidecar(make_sidecar, mock_provider, tmp_path)
    response = httpx.post(
        sidecar.openai_base + "/retrieve", json={"corpus": "kb", "query": "Python异步编程", "top_k": 2}
    )
    assert response.status_code == 200
    results = [json.loads(line) for line in response.text.splitlines()]
    assert [r["doc_id"] for r in results] == ["asyncio.md"] and results[0]["score"] > 0
    missing = httpx.post(sidecar.openai_base + "/retrieve", json={"corpus": "nope", "query": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["message"]


def test_context_is_added_as_a_system_message(make_sidecar, mock_provider, tmp_path: Path) -> None:
    sidecar = retrieval_sidecar(make_sidecar, mock_provider, tmp_path)
    raw = sidecar.openai().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "What is Redis used for as a cache?"}]
    )
    assert raw.headers["x-llm-sidecar-context-passages"] == "1"
    sent = mock_provider.requests()[-1]["body"]["messages"]
    assert sent[0]["role"] == "system" and "in-memory data store" in sent[0]["content"]
    assert sent[-1] == {"role": "user", "content": "What is Redis used for as a cache?"}
    # A group without context injection is left alone.
    sidecar.openai().chat.completions.create(model="plain", messages=[{"role": "user", "content": "Redis cache?"}])
    assert len(mock_provider.requests()[-1]["body"]["messages"]) == 1


def test_a_retrieve_body_that_stops_coming_is_a_408(make_sidecar, mock_provider, tmp_path: Path) -> None:
    # As a call's body (tests/test_listeners.py): it held the connection for good, never evicted.
    import http.client
    import socket

    groups = {"plain": {"endpoints": [{"name": "p", "url": mock_provider.url + "/v1", "api_key": PROVIDER_KEY}]}}
    sidecar = make_sidecar(
        server={"port": 0, "admin_port": 0, "admin_host": "127.0.0.1", "keepalive_timeout": 1},
        model_groups=groups,
        retrieval={"corpora": {"kb": str(corpus(tmp_path))}, "reload_interval": 0},
    )
    with socket.create_connection(("127.0.0.1", sidecar.servers.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 408
        assert json.loads(response.read())["error"]["type"] == "timeout_error"
