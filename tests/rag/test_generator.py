import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from proxy.rag import AsyncRAGGenerator, Chunk, InvalidDocumentError, MixedTokenizer, Passage, RetrievalInputError

DOCS = [
    "Python's asyncio runs coroutines on an event loop.",
    "Bread needs flour, water, salt and yeast.",
    "Python异步编程依靠asyncio库和事件循环。",
    "The event loop schedules callbacks and tasks.",
]


async def _collect(stream) -> list[Passage]:
    return [passage async for passage in stream]


async def test_streams_relevant_passages_with_ids_offsets_and_scores() -> None:
    results = await _collect(AsyncRAGGenerator().stream_retrieval("asyncio event loop", DOCS))
    assert {p.doc_id for p in results} == {0, 2, 3}
    for passage in results:
        assert DOCS[passage.doc_id][passage.start : passage.end] == passage.text
        assert passage.score > 0


async def test_mapping_documents_keep_their_ids() -> None:
    results = await _collect(AsyncRAGGenerator().stream_retrieval("Python异步", {"zh": DOCS[2], "bread": DOCS[1]}))
    assert [p.doc_id for p in results] == ["zh"]


@pytest.mark.parametrize("documents", [[], {}])
async def test_an_empty_corpus_yields_nothing(documents: object) -> None:
    assert await _collect(AsyncRAGGenerator().stream_retrieval("anything", documents)) == []
    assert await _collect(AsyncRAGGenerator(exact=True).stream_retrieval("anything", documents)) == []


@pytest.mark.parametrize("query", ["", "   ", None])
def test_an_empty_query_is_refused_at_the_call(query: object) -> None:
    with pytest.raises(RetrievalInputError, match="query") as caught:
        AsyncRAGGenerator().stream_retrieval(query, DOCS)
    assert caught.value.param == "query"


def test_non_string_documents_are_refused_at_the_call() -> None:
    with pytest.raises(InvalidDocumentError, match="document 1"):
        AsyncRAGGenerator().stream_retrieval("q", ["fine", 42])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(RetrievalInputError, match="greater than overlap"):
        AsyncRAGGenerator(chunk_size=100, overlap=100)
    with pytest.raises(RetrievalInputError, match="top_k"):
        AsyncRAGGenerator(top_k=0)
    with pytest.raises(RetrievalInputError, match="top_k"):
        AsyncRAGGenerator().stream_retrieval("q", DOCS, top_k=-1)


async def test_exact_mode_matches_the_index_best_first() -> None:
    generator = AsyncRAGGenerator(chunk_size=60, overlap=0, batch_size=1)
    exact = await _collect(generator.stream_retrieval("asyncio event loop", DOCS, exact=True, top_k=2))
    indexed = await _collect(generator.stream_retrieval("asyncio event loop", await generator.index(DOCS), top_k=2))
    assert exact == indexed
    assert len(exact) == 2 and exact[0].score >= exact[1].score


async def test_streaming_top_k_and_min_score_bound_the_results() -> None:
    generator = AsyncRAGGenerator(batch_size=1)
    assert len(await _collect(generator.stream_retrieval("asyncio event loop", DOCS, top_k=1))) == 1
    best = (await _collect(generator.stream_retrieval("asyncio event loop", DOCS, exact=True)))[0]
    strict = await _collect(generator.stream_retrieval("asyncio event loop", DOCS, exact=True, min_score=best.score))
    assert strict == [best]


async def test_a_scorer_hook_gives_the_final_scores() -> None:
    seen: list[tuple[str, int, int]] = []

    async def prefer_bread(query: str, chunks: Sequence[Chunk], lexical: Sequence[float]) -> list[float]:
        seen.append((query, len(chunks), len(lexical)))
        await asyncio.sleep(0)
        return [10.0 if "Bread" in c.text else s for c, s in zip(chunks, lexical)]

    generator = AsyncRAGGenerator(scorer=prefer_bread, batch_size=2)
    streamed = await _collect(generator.stream_retrieval("asyncio", DOCS))
    assert 1 in {p.doc_id for p in streamed}  # the scorer sees every chunk, even lexically irrelevant ones
    exact = await _collect(generator.stream_retrieval("asyncio", DOCS, exact=True, top_k=1))
    assert [p.doc_id for p in exact] == [1] and exact[0].score == 10.0
    indexed = await _collect(generator.stream_retrieval("asyncio", await generator.index(DOCS)))
    assert indexed[0].doc_id in {0, 2}  # with an index, the scorer re-ranks lexical candidates only
    assert all(query == "asyncio" and n == m for query, n, m in seen)


async def test_a_scorer_returning_the_wrong_count_is_an_error() -> None:
    async def broken(query: str, chunks: Sequence[Chunk], lexical: Sequence[float]) -> list[float]:
        return []

    with pytest.raises(RetrievalInputError, match="scores for"):
        await _collect(AsyncRAGGenerator(scorer=broken).stream_retrieval("asyncio", DOCS))


class _CountingTokenizer:
    """Counts the chunks tokenised so far and the threads that did it."""

    def __init__(self) -> None:
        self.calls = 0
        self.threads: set[int] = set()
        self._inner = MixedTokenizer()

    def __call__(self, text: str) -> list[str]:
        self.calls += 1
        self.threads.add(threading.get_ident())
        return self._inner(text)


async def test_the_first_result_arrives_before_the_last_chunk_is_scored() -> None:
    filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 3
    documents = [f"{filler} Document {i} mentions the needle." if i % 50 == 0 else filler for i in range(4000)]
    tokenizer = _CountingTokenizer()
    generator = AsyncRAGGenerator(chunk_size=400, tokenizer=tokenizer, batch_size=100, offload_chars=10_000)
    total_chunks = len(list(generator.chunker(0, documents[0]))) * len(documents)
    stream = generator.stream_retrieval("needle", documents)
    first = await anext(stream)
    tokenised_before_first = tokenizer.calls - 1  # minus the query itself
    rest = [p async for p in stream]
    assert first.doc_id == 0
    # The first batch plus at most the one prefetched after it, out of 40 batches.
    assert tokenised_before_first <= 2 * 100 < total_chunks
    assert len(rest) + 1 == 80
    assert tokenizer.calls - 1 == total_chunks
    # Large input is tokenised off the event loop's thread.
    assert tokenizer.threads - {threading.get_ident()}


async def test_breaking_out_early_stops_the_work() -> None:
    documents = ["needle in text. " * 5] * 2000
    tokenizer = _CountingTokenizer()
    executor = ThreadPoolExecutor(2)
    generator = AsyncRAGGenerator(
        chunk_size=100, tokenizer=tokenizer, batch_size=50, offload_chars=1000, executor=executor
    )
    async for _ in generator.stream_retrieval("needle", documents, top_k=3):
        pass
    await asyncio.to_thread(executor.shutdown, wait=True)  # what was submitted (a prefetched batch) has run
    assert tokenizer.calls < 200


async def test_a_dense_retriever_is_fused_with_bm25_and_bm25_answers_alone_when_it_fails() -> None:
    from proxy.rag import FusionSettings, Passage
    from proxy.rag.errors import VectorStoreError

    documents = {
        "redis.md": "Redis is an in-memory store used as a cache.",
        "helm.md": "Helm charts package Kubernetes manifests.",
        "bread.md": "Bread needs flour and water.",
    }
    index = AsyncRAGGenerator(chunk_size=200, overlap=0).build_index(documents)
    chunk = {c.doc_id: c for c in index.chunks}
    asked: list[tuple[str, int]] = []

    async def dense(query: str, n: int) -> list[Passage]:
        asked.append((query, n))
        return [Passage.of(chunk["helm.md"], 0.9), Passage.of(chunk["bread.md"], 0.8)]

    fusion = FusionSettings(bm25_weight=1.0, rank_constant=10, candidates=7)
    hybrid = AsyncRAGGenerator(chunk_size=200, overlap=0, dense=dense, fusion=fusion)
    found = [p async for p in hybrid.stream_retrieval("Redis cache", index, top_k=3)]
    # BM25 ranks redis.md alone, the dense side helm.md then bread.md: redis and helm tie at 1/11
    # (the first list's passage first), bread.md has 1/12.
    assert [p.doc_id for p in found] == ["redis.md", "helm.md", "bread.md"]
    assert [round(p.score, 4) for p in found] == [round(1 / 11, 4), round(1 / 11, 4), round(1 / 12, 4)]
    assert asked == [("Redis cache", 7)]

    async def down(query: str, n: int) -> list[Passage]:
        raise VectorStoreError("vector store search failed: UNAVAILABLE")

    fallback = AsyncRAGGenerator(chunk_size=200, overlap=0, dense=down)
    assert [p.doc_id async for p in fallback.stream_retrieval("Redis cache", index)] == ["redis.md"]
