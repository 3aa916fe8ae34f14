"""The sidecar side of retrieval, against a real aiohttp server on loopback."""

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from proxy.rag import Passage
from proxy.rag.service import (
    ContextInjection,
    RetrievalConfig,
    Retriever,
    handle_retrieve,
    last_user_text,
    retriever_ctx,
    with_context,
)

FILES = {
    "asyncio.md": "# asyncio\n\nPython的异步编程依靠asyncio库。事件循环在单个线程里调度许多协程。",
    "bread.txt": "Sourdough bread rises with a starter of wild yeast. A long cold fermentation gives it a sour taste.",
    "redis.txt": "Redis is an in-memory key-value store, often used as a cache with expiry times on keys.",
    "ignored.json": "Sourdough asyncio Redis",
}


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "docs"
    directory.mkdir()
    for name, text in FILES.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


@pytest.fixture
async def client(corpus_dir: Path) -> AsyncIterator[TestClient]:
    config = RetrievalConfig(corpora={"kb": corpus_dir}, chunk_size=200, overlap=20, reload_interval=0)
    app = web.Application()
    app.cleanup_ctx.append(retriever_ctx(config))
    app.router.add_post("/v1/retrieve", handle_retrieve)
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        yield test_client


async def test_results_stream_as_ndjson_best_first(client: TestClient) -> None:
    response = await client.post("/v1/retrieve", json={"corpus": "kb", "query": "sourdough sour taste", "top_k": 2})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in (await response.read()).splitlines()]
    assert lines[0]["doc_id"] == "bread.txt" and lines[0]["rank"] == 1
    assert len(lines) <= 2
    assert all(a["score"] >= b["score"] for a, b in zip(lines, lines[1:]))
    assert FILES["bread.txt"][lines[0]["start"] : lines[0]["end"]] == lines[0]["text"]


async def test_first_line_can_be_read_before_the_stream_ends(client: TestClient) -> None:
    response = await client.post("/v1/retrieve", json={"corpus": "kb", "query": "Python异步"})
    first = orjson.loads(await response.content.readline())
    assert first["doc_id"] == "asyncio.md"
    assert await response.content.read() == b""


async def test_sse_when_asked(client: TestClient) -> None:
    response = await client.post(
        "/v1/retrieve", json={"corpus": "kb", "query": "Redis cache"}, headers={"Accept": "text/event-stream"}
    )
    assert response.headers["Content-Type"].startswith("text/event-stream")
    frames = (await response.text()).strip().split("\n\n")
    assert frames[-1] == "data: [DONE]"
    assert orjson.loads(frames[0].removeprefix("data: "))["doc_id"] == "redis.txt"


async def test_files_of_other_types_are_not_indexed(client: TestClient) -> None:
    response = await client.post("/v1/retrieve", json={"corpus": "kb", "query": "Sourdough asyncio Redis", "top_k": 50})
    assert {orjson.loads(line)["doc_id"] for line in (await response.read()).splitlines()} <= {
        "asyncio.md",
        "bread.txt",
        "redis.txt",
    }


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"corpus": "nope", "query": "x"}, 404, "corpus"),
        ({"corpus": "kb", "query": ""}, 400, "query"),
        ({"corpus": "kb", "query": 3}, 400, "query"),
        ({"query": "x"}, 400, "corpus"),
        ({"corpus": "kb", "query": "x", "top_k": 0}, 400, "top_k"),
        ({"corpus": "kb", "query": "x", "top_k": 1000}, 400, "top_k"),
        ({"corpus": "kb", "query": "x", "top_k": "3"}, 400, "top_k"),
        (["not", "an", "object"], 400, None),
    ],
)
async def test_bad_input_gets_an_openai_error(client: TestClient, body: object, status: int, param: str | None) -> None:
    response = await client.post("/v1/retrieve", json=body)
    assert response.status == status
    error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["message"]
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


async def test_malformed_json_is_a_400(client: TestClient) -> None:
    response = await client.post("/v1/retrieve", data=b"{not json")
    assert response.status == 400


async def test_a_changed_corpus_is_reindexed_and_calls_keep_working(corpus_dir: Path) -> None:
    retriever = Retriever(RetrievalConfig(corpora={"kb": corpus_dir}, reload_interval=0))
    await retriever.start()
    assert await retriever.retrieve("kb", "tokio runtime") == []
    assert await retriever.refresh() == []  # nothing changed, nothing reloaded
    (corpus_dir / "rust.md").write_text("Tokio is an async runtime for Rust.", encoding="utf-8")
    assert await retriever.refresh() == ["kb"]
    assert [p.doc_id for p in await retriever.retrieve("kb", "tokio runtime")] == ["rust.md"]
    os.remove(corpus_dir / "rust.md")
    assert await retriever.refresh() == ["kb"]
    assert await retriever.retrieve("kb", "tokio runtime") == []
    await retriever.close()


async def test_hidden_configmap_directories_are_skipped(tmp_path: Path) -> None:
    # The layout of a mounted ConfigMap: visible symlinks into a hidden, timestamped directory.
    real = tmp_path / "..2024_01_01_00_00_00.1"
    real.mkdir()
    (real / "faq.md").write_text("The sidecar listens on port 8080.", encoding="utf-8")
    (tmp_path / "..data").symlink_to(real.name)
    (tmp_path / "faq.md").symlink_to("..data/faq.md")
    retriever = Retriever(RetrievalConfig(corpora={"faq": tmp_path}, reload_interval=0))
    await retriever.start()
    assert [p.doc_id for p in await retriever.retrieve("faq", "sidecar port")] == ["faq.md"]


async def test_a_directory_that_goes_away_is_an_empty_corpus_until_it_returns(tmp_path: Path) -> None:
    directory = tmp_path / "kb"
    directory.mkdir()
    (directory / "faq.md").write_text("The sidecar listens on port 8080.", encoding="utf-8")
    retriever = Retriever(RetrievalConfig(corpora={"kb": directory}, reload_interval=0))
    await retriever.start()
    moved = directory.rename(tmp_path / "elsewhere")
    assert await retriever.refresh() == ["kb"]
    assert await retriever.retrieve("kb", "sidecar port") == []
    moved.rename(directory)
    assert await retriever.refresh() == ["kb"]
    assert [p.doc_id for p in await retriever.retrieve("kb", "sidecar port")] == ["faq.md"]
    await retriever.close()


def test_a_configured_corpus_directory_must_exist_and_hold_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden.md").write_text("not indexed", encoding="utf-8")
    with pytest.raises(ValidationError) as info:
        RetrievalConfig(corpora={"typo": tmp_path / "absent", "empty": tmp_path / "empty"})
    assert [(e["loc"], e["msg"]) for e in info.value.errors()] == [
        (("corpora", "typo"), f"{tmp_path / 'absent'} is not a directory"),
        (("corpora", "empty"), f"no .txt or .md files in {tmp_path / 'empty'}"),
    ]


def test_config_rejects_contradictions() -> None:
    with pytest.raises(ValidationError, match="overlap"):
        RetrievalConfig(chunk_size=100, overlap=100)
    with pytest.raises(ValidationError, match="default_top_k"):
        RetrievalConfig(default_top_k=10, max_top_k=5)
    with pytest.raises(ValidationError):
        RetrievalConfig(unknown_key=1)


PASSAGES = [Passage("a.md", "Alpha text.", 0, 11, 2.0)]


def test_openai_context_is_a_leading_system_message() -> None:
    payload = {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    }
    updated = with_context(payload, "openai", "CONTEXT")
    assert updated["messages"][0] == {"role": "system", "content": "CONTEXT"}
    assert updated["messages"][1:] == payload["messages"]
    assert len(payload["messages"]) == 2  # the input is not modified


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        (None, "CONTEXT"),
        ("Be brief.", "CONTEXT\n\nBe brief."),
        (
            [{"type": "text", "text": "Be brief."}],
            [{"type": "text", "text": "CONTEXT"}, {"type": "text", "text": "Be brief."}],
        ),
    ],
)
def test_anthropic_context_is_prepended_to_system(system: object, expected: object) -> None:
    payload: dict = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    if system is not None:
        payload["system"] = system
    assert with_context(payload, "anthropic", "CONTEXT")["system"] == expected


def test_last_user_text_reads_strings_and_text_parts() -> None:
    payload = {
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": [{"type": "image_url"}, {"type": "text", "text": "second"}]},
        ]
    }
    assert last_user_text(payload, "openai") == "second"
    assert last_user_text({"messages": []}, "anthropic") is None


async def test_inject_context_adds_the_top_passages_and_counts_them(corpus_dir: Path) -> None:
    retriever = Retriever(RetrievalConfig(corpora={"kb": corpus_dir}, reload_interval=0))
    await retriever.start()
    settings = ContextInjection(corpus="kb", top_k=2)
    payload = {"model": "m", "messages": [{"role": "user", "content": "How does sourdough bread rise?"}]}
    updated, added = await retriever.inject_context(payload, "openai", settings)
    assert added >= 1
    assert "wild yeast" in updated["messages"][0]["content"]
    anthropic = {"model": "m", "system": "Be brief.", "messages": [{"role": "user", "content": "zzz qqq"}]}
    assert await retriever.inject_context(anthropic, "anthropic", settings) == (anthropic, 0)


class _Recorder:
    def __init__(self) -> None:
        self.retrievals: list[tuple[str, int]] = []
        self.indexings: list[tuple[str, int]] = []

    def retrieved(self, corpus: str, seconds: float, passages: int) -> None:
        self.retrievals.append((corpus, passages))

    def indexed(self, corpus: str, seconds: float, files: int, chunks: int) -> None:
        self.indexings.append((corpus, files))


async def test_the_observer_hears_indexing_and_retrieval_and_polling_reloads(corpus_dir: Path) -> None:
    recorder = _Recorder()
    retriever = Retriever(RetrievalConfig(corpora={"kb": corpus_dir}, reload_interval=0.02), observer=recorder)
    await retriever.start()
    await retriever.retrieve("kb", "Redis cache", top_k=1)
    assert recorder.indexings == [("kb", 3)] and recorder.retrievals == [("kb", 1)]
    (corpus_dir / "more.txt").write_text("more text", encoding="utf-8")
    for _ in range(200):  # the poller runs every 20 ms; give it up to 2 s
        if len(recorder.indexings) > 1:
            break
        await asyncio.sleep(0.01)
    await retriever.close()
    assert recorder.indexings[-1] == ("kb", 4)
