"""``AsyncRAGGenerator``: retrieval that starts answering before the corpus is scored.

Two ways in, one way out (``Passage`` values):

* **Raw documents** (a list or a mapping of strings): chunks are tokenised and
  scored in batches of ``batch_size``; each batch's relevant passages are
  yielded as soon as that batch is scored, so the first result's latency does
  not grow with the corpus. Mid-stream scores use the corpus statistics seen
  so far (see ``CorpusStatistics``). With ``exact=True`` the whole corpus is
  scored first and the exact BM25 top k is yielded, best first.
* **A ``BM25Index``** (``await generator.index(documents)``; build once, query
  many): the query touches only its terms' postings and results come best
  first, exact by construction. With a ``dense`` retriever (vectors of the same
  chunks, e.g. ``hybrid.vector_retriever`` over a Milvus collection), RM3
  ``expansion`` or a ``rewriter``, the rankings are fused (``HybridSearch``).

Large inputs are tokenised and scored in an executor (threads by default), so
an event loop shared with a proxy keeps serving; threads share the GIL, so this
keeps the loop responsive rather than adding CPU. An optional async ``Scorer``
(for example embeddings fetched through the sidecar) gives each chunk its final
score from the chunk and its lexical score; up to ``scorer_concurrency``
batches are with the scorer at once, and results are yielded in the order the
batches finish.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Executor
from itertools import islice
from typing import Literal

from proxy.rag.bm25 import BM25Index, BM25Parameters, CorpusStatistics, query_terms
from proxy.rag.chunking import Chunker, Documents, chunk_documents, make_chunker, normalize_documents
from proxy.rag.config import ExpansionSettings, FusionSettings
from proxy.rag.errors import RetrievalInputError
from proxy.rag.hybrid import DenseRetriever, HybridSearch, Rewriter
from proxy.rag.passage import Chunk, DocumentId, Passage
from proxy.rag.tokenizer import MixedTokenizer, Tokenizer

#: ``await scorer(query, chunks, lexical_scores)`` → one final score per chunk, same order.
Scorer = Callable[[str, Sequence[Chunk], Sequence[float]], Awaitable[Sequence[float]]]

# A chunk after the lexical pass: its query-term frequencies, length and lexical score.
_Scored = tuple[Chunk, tuple[int, ...], int, float]


class AsyncRAGGenerator:
    """Chunk, score and stream relevant passages of documents for a query.

    ``chunk_size``/``overlap`` are in characters (``overlap`` defaults to a
    tenth of ``chunk_size``); ``chunking`` is ``"sentence"`` (never cuts inside
    a sentence when avoidable), ``"fixed"``, or any ``Chunker``. ``top_k``,
    ``min_score`` and ``exact`` are defaults that ``stream_retrieval`` can
    override per call. Inputs of at least ``offload_chars`` characters are
    processed in ``executor`` (the loop's default thread pool when None).
    Raises ``RetrievalInputError`` on unusable settings.
    """

    def __init__(
        self,
        chunk_size: int = 1000,
        overlap: int | None = None,
        *,
        chunking: Literal["sentence", "fixed", "markdown"] | Chunker = "sentence",
        tokenizer: Tokenizer | None = None,
        parameters: BM25Parameters | None = None,
        top_k: int | None = None,
        min_score: float | None = None,
        exact: bool = False,
        scorer: Scorer | None = None,
        scorer_concurrency: int = 4,
        dense: DenseRetriever | None = None,
        fusion: FusionSettings | None = None,
        expansion: ExpansionSettings | None = None,
        rewriter: Rewriter | None = None,
        batch_size: int = 256,
        offload_chars: int = 100_000,
        executor: Executor | None = None,
    ) -> None:
        if overlap is None:
            overlap = chunk_size // 10 if isinstance(chunk_size, int) else 0
        self.chunker: Chunker = chunking if callable(chunking) else make_chunker(chunking, chunk_size, overlap)
        if callable(chunking):
            _check_sizes_only(chunk_size, overlap)
        self.chunk_size = chunk_size
        self.overlap = overlap
        self.tokenizer: Tokenizer = tokenizer or MixedTokenizer()
        self.parameters = parameters or BM25Parameters()
        self.top_k = _checked_top_k(top_k)
        self.min_score = min_score
        self.exact = exact
        self.scorer = scorer
        self.dense = dense
        self.fusion = fusion or FusionSettings()
        self.expansion = expansion or ExpansionSettings()
        self.rewriter = rewriter
        if scorer_concurrency < 1:
            raise RetrievalInputError("scorer_concurrency must be at least 1", param="scorer_concurrency")
        self.scorer_concurrency = scorer_concurrency
        if batch_size < 1:
            raise RetrievalInputError("batch_size must be at least 1", param="batch_size")
        self.batch_size = batch_size
        self.offload_chars = offload_chars
        self.executor = executor

    # -- build once, query many ------------------------------------------------------------

    def build_index(self, documents: Documents) -> BM25Index:
        """A ``BM25Index`` of ``documents``, built in the calling thread (linear in the text)."""
        pairs = normalize_documents(documents)
        return BM25Index.build(chunk_documents(pairs, self.chunker), self.tokenizer, self.parameters)

    async def index(self, documents: Documents) -> BM25Index:
        """``build_index`` in the executor, so the event loop keeps serving meanwhile."""
        pairs = normalize_documents(documents)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor,
            lambda: BM25Index.build(chunk_documents(pairs, self.chunker), self.tokenizer, self.parameters),
        )

    # -- streaming ----------------------------------------------------------------------------

    def stream_retrieval(
        self,
        query: str,
        documents: Documents | BM25Index,
        *,
        top_k: int | None | Literal["default"] = "default",
        min_score: float | None | Literal["default"] = "default",
        exact: bool | None = None,
    ) -> AsyncIterator[Passage]:
        """Relevant passages of ``documents`` for ``query``, each as soon as it is known.

        Input is checked here, before iteration starts: an empty query, a
        non-string document or a bad ``top_k`` raise ``RetrievalInputError``
        at the call. An empty corpus yields nothing. A passage is relevant if
        its score is positive (``min_score=None``) or at least ``min_score``.
        At most ``top_k`` passages are yielded (all if None): in streaming mode
        the first ``top_k`` found, batch by batch, best first within a batch;
        with ``exact=True`` (or an index) the best ``top_k`` overall, best first.
        """
        if not isinstance(query, str) or not query.strip():
            raise RetrievalInputError("query must be a non-empty string", param="query")
        k = self.top_k if top_k == "default" else _checked_top_k(top_k)
        threshold = self.min_score if min_score == "default" else min_score
        if isinstance(documents, BM25Index):
            if self.dense is not None or self.expansion.feedback or self.rewriter is not None:
                return self._hybrid(query, documents, k, threshold)
            return self._from_index(query, documents, k, threshold)
        pairs = normalize_documents(documents)
        run_exact = self.exact if exact is None else exact
        return self._from_documents(query, pairs, k, threshold, run_exact)

    async def _from_index(
        self, query: str, index: BM25Index, top_k: int | None, min_score: float | None
    ) -> AsyncIterator[Passage]:
        limit = None if self.scorer else top_k
        if len(index) * 200 >= self.offload_chars:
            # A query of very common terms walks long postings: keep that off the loop too.
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(self.executor, index.search, query, limit, None)
        else:
            found = index.search(query, limit, None)
        if self.scorer is not None:
            chunks = [Chunk(p.doc_id, p.text, p.start, p.end) for p in found]
            found = await self._rescore_all(self.scorer, query, chunks, [p.score for p in found])
        for passage in best_passages(found, top_k, min_score):
            yield passage

    async def _hybrid(
        self, query: str, index: BM25Index, top_k: int | None, min_score: float | None
    ) -> AsyncIterator[Passage]:
        search = HybridSearch(index, self.dense, self.fusion, self.expansion, self.rewriter, self.executor)
        for passage in best_passages(await search.rank(query, top_k or len(index)), top_k, min_score):
            yield passage

    async def _from_documents(
        self,
        query: str,
        pairs: list[tuple[DocumentId, str]],
        top_k: int | None,
        min_score: float | None,
        exact: bool,
    ) -> AsyncIterator[Passage]:
        statistics = CorpusStatistics(query_terms(query, self.tokenizer), self.parameters)
        keep_all = self.scorer is not None
        chunks = chunk_documents(pairs, self.chunker)
        offload = sum(len(text) for _, text in pairs) >= self.offload_chars
        loop = asyncio.get_running_loop()

        def lexical_batch() -> list[_Scored]:
            """Tokenise and score the next batch (runs alone: one batch in flight at a time)."""
            scored: list[_Scored] = []
            for chunk in islice(chunks, self.batch_size):
                tfs, length = statistics.observe(self.tokenizer(chunk.text))
                scored.append((chunk, tfs, length, 0.0))
            weights = statistics.weights()
            return [(c, tfs, n, statistics.score(tfs, n, weights)) for c, tfs, n, _ in scored]

        def start_batch() -> asyncio.Future[list[_Scored]]:
            if offload:
                return loop.run_in_executor(self.executor, lexical_batch)
            future: asyncio.Future[list[_Scored]] = loop.create_future()
            future.set_result(lexical_batch())
            return future

        if exact:
            candidates: list[_Scored] = []
            while batch := await start_batch():
                candidates.extend(item for item in batch if keep_all or item[3] > 0.0)
            weights = statistics.weights()
            exact_chunks = [c for c, _, _, _ in candidates]
            lexical = [statistics.score(tfs, n, weights) for _, tfs, n, _ in candidates]
            if self.scorer is not None:
                passages = await self._rescore_all(self.scorer, query, exact_chunks, lexical)
            else:
                passages = [Passage.of(c, s) for c, s in zip(exact_chunks, lexical)]
            for passage in best_passages(passages, top_k, min_score):
                yield passage
            return

        remaining = top_k
        pending_batch: asyncio.Future[list[_Scored]] | None = start_batch()
        scoring: set[asyncio.Future[list[Passage]]] = set()
        try:
            while pending_batch is not None or scoring:
                waiting: set[asyncio.Future] = set(scoring)
                if pending_batch is not None and len(scoring) < self.scorer_concurrency:
                    waiting.add(pending_batch)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                ready: list[list[Passage]] = []
                if pending_batch in done:
                    batch = pending_batch.result()
                    # Start on the next batch before handing this one out: the executor
                    # works while the consumer handles the results.
                    pending_batch = start_batch() if batch else None
                    if batch and self.scorer is not None:
                        scoring.add(asyncio.ensure_future(self._rescore(self.scorer, query, batch)))
                    elif batch:
                        ready.append([Passage.of(c, s) for c, _, _, s in batch if s > 0.0])
                for future in done - {pending_batch}:
                    if future in scoring:
                        scoring.discard(future)
                        ready.append(future.result())
                for passages in ready:
                    for passage in best_passages(passages, remaining, min_score):
                        yield passage
                        if remaining is not None:
                            remaining -= 1
                            if remaining == 0:
                                return
        finally:
            for future in scoring:
                future.cancel()

    async def _rescore(self, scorer: Scorer, query: str, batch: Sequence[_Scored]) -> list[Passage]:
        chunks = [c for c, _, _, _ in batch]
        return _with_scores(chunks, await scorer(query, chunks, [s for _, _, _, s in batch]))

    async def _rescore_all(
        self, scorer: Scorer, query: str, chunks: Sequence[Chunk], lexical: Sequence[float]
    ) -> list[Passage]:
        """The scorer over all ``chunks`` in batches, at most ``scorer_concurrency`` at once."""
        gate = asyncio.Semaphore(self.scorer_concurrency)
        size = self.batch_size

        async def one(start: int) -> list[Passage]:
            async with gate:
                part = chunks[start : start + size]
                return _with_scores(part, await scorer(query, part, lexical[start : start + size]))

        parts = await asyncio.gather(*(one(start) for start in range(0, len(chunks), size)))
        return [passage for part in parts for passage in part]


def _with_scores(chunks: Sequence[Chunk], scores: Sequence[float]) -> list[Passage]:
    if len(scores) != len(chunks):
        raise RetrievalInputError(f"scorer returned {len(scores)} scores for {len(chunks)} chunks", param="scorer")
    return [Passage.of(chunk, float(score)) for chunk, score in zip(chunks, scores)]


def best_passages(passages: Sequence[Passage], top_k: int | None, min_score: float | None) -> Iterator[Passage]:
    """Relevant passages, best first (ties keep input order), at most ``top_k``."""
    if min_score is None:
        relevant = [(p, i) for i, p in enumerate(passages) if p.score > 0.0]
    else:
        relevant = [(p, i) for i, p in enumerate(passages) if p.score >= min_score]
    key = lambda item: (item[0].score, -item[1])  # noqa: E731
    if top_k is None:
        ranked = sorted(relevant, key=key, reverse=True)
    else:
        ranked = heapq.nlargest(top_k, relevant, key=key)
    return (p for p, _ in ranked)


def _checked_top_k(top_k: int | None) -> int | None:
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise RetrievalInputError(f"top_k must be a positive integer or None, got {top_k!r}", param="top_k")
    return top_k


def _check_sizes_only(chunk_size: int, overlap: int) -> None:
    if chunk_size <= overlap:
        raise RetrievalInputError(
            f"chunk_size ({chunk_size}) must be greater than overlap ({overlap})", param="chunk_size"
        )
