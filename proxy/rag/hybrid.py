"""One corpus searched every way it is configured to be: BM25 and/or dense rankings, expanded, fused.

``HybridSearch`` is what both faces use: ``AsyncRAGGenerator`` (given a
``dense`` retriever) and the sidecar's ``Retriever`` (a corpus in ``dense`` or
``hybrid`` mode, or with expansion). For each query (the question and, with a
``rewriter``, its rewrites) it takes the BM25 ranking (with RM3 feedback when
configured) and the dense ranking, then fuses every list by reciprocal rank
fusion. One list alone keeps its own scores. When the dense side fails
(``RetrievalUnavailable``) and there is a BM25 index, BM25 answers alone; with no
index the error is the caller's.

A ``DenseRetriever`` is any ``async (query, n) -> passages``, nearest first;
``vector_retriever`` makes one from an embedding function and a ``VectorSearch``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

from proxy.rag.bm25 import BM25Index
from proxy.rag.config import ExpansionSettings, FusionSettings
from proxy.rag.errors import RetrievalUnavailable
from proxy.rag.expansion import rm3_query
from proxy.rag.fusion import fuse
from proxy.rag.passage import Passage
from proxy.rag.store import VectorSearch

LOG = logging.getLogger("llm_sidecar.rag")

#: ``await dense(query, n)`` → at most ``n`` passages nearest to ``query``, best first.
DenseRetriever = Callable[[str, int], Awaitable[Sequence[Passage]]]
#: ``await rewriter(question)`` → other queries for the same question (may be empty).
Rewriter = Callable[[str], Awaitable[Sequence[str]]]


def vector_retriever(
    embed: Callable[[str], Awaitable[Sequence[float]]],
    store: VectorSearch,
    collection: str,
    executor: Executor | None = None,
) -> DenseRetriever:
    """A ``DenseRetriever``: ``embed`` the query, then search ``collection`` of ``store`` (in ``executor``)."""

    async def dense(query: str, n: int) -> Sequence[Passage]:
        vector = await embed(query)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, store.search, collection, vector, n)

    return dense


@dataclass(frozen=True, slots=True)
class HybridSearch:
    index: BM25Index | None
    dense: DenseRetriever | None = None
    fusion: FusionSettings = FusionSettings()
    expansion: ExpansionSettings = ExpansionSettings()
    rewriter: Rewriter | None = None
    executor: Executor | None = None
    #: named in log lines (the corpus)
    name: str = ""

    async def rank(self, query: str, top_k: int) -> list[Passage]:
        """Every ranking of ``query`` (and its rewrites), fused; at least ``top_k`` deep when the corpus allows."""
        depth = max(self.fusion.candidates, top_k)
        queries = [query, *(await self._rewrites(query))]
        rankings: list[tuple[float, list[Passage]]] = []
        for text in queries:
            if self.index is not None:
                rankings.append((self.fusion.bm25_weight, await self._bm25(self.index, text, depth)))
            if self.dense is not None:
                try:
                    rankings.append((self.fusion.dense_weight, list(await self.dense(text, depth))))
                except RetrievalUnavailable as exc:
                    if self.index is None:
                        raise
                    LOG.warning(
                        "dense retrieval failed: answering from BM25 alone",
                        extra={"fields": {"corpus": self.name, "error": exc.message}},
                    )
        if len(rankings) == 1:
            return rankings[0][1]  # one list: keep its own scores
        return fuse(rankings, self.fusion.rank_constant)

    async def _bm25(self, index: BM25Index, query: str, depth: int) -> list[Passage]:
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(self.executor, index.search, query, depth, None)
        expansion = self.expansion
        if expansion.feedback and found:
            weighted = rm3_query(
                index,
                query,
                found[: expansion.feedback_passages],
                expansion.feedback_terms,
                expansion.feedback_original_weight,
            )
            found = await loop.run_in_executor(self.executor, index.search, weighted, depth, None)
        return found

    async def _rewrites(self, query: str) -> Sequence[str]:
        if self.rewriter is None:
            return []
        try:
            return await self.rewriter(query)
        except RetrievalUnavailable as exc:  # a rewrite only adds: without it, the question alone
            LOG.warning(
                "query rewrite failed: searching with the question alone",
                extra={"fields": {"corpus": self.name, "error": exc.message}},
            )
            return []
