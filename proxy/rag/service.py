"""Retrieval in the sidecar: configured corpora, ``POST /v1/retrieve``, and context injection.

* ``RetrievalConfig`` is the ``retrieval`` section of the config: corpora
  (name → directory of ``.txt``/``.md`` files, e.g. a mounted ConfigMap, and
  how each is searched: ``bm25``, ``dense`` or ``hybrid``), the vector store,
  chunking, and how often to look for changes. ``ContextInjection`` is the
  per-model-group switch that adds retrieved passages to a call.
* ``Retriever`` owns the BM25 indexes: it loads every ``bm25``/``hybrid`` corpus
  at start-up in an executor, polls the files' mtimes every ``reload_interval``
  seconds and re-indexes a corpus whose files changed. A reload builds the new
  index aside and swaps it in one assignment, so calls in flight finish on the
  old one and no call is dropped; a corpus that fails to reload keeps its last
  index. Vectors are searched in the shared store (``store.open_search``), query
  embeddings and rewrites are calls through the sidecar itself (``client.py``),
  and the rankings are fused by ``hybrid.HybridSearch``.
* ``handle_retrieve`` streams results as NDJSON, or SSE when the caller sends
  ``Accept: text/event-stream``, best first; bad input gets an OpenAI-style
  error (400, or 404 for an unknown corpus, or 503 when a ``dense`` corpus's
  store or embeddings fail) before anything is streamed.
* ``Retriever.inject_context`` adds the top passages for a chat call's last
  user message as a system message (OpenAI) or in front of ``system``
  (Anthropic) and says how many it added.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import web

from proxy.errors import ProxyError
from proxy.rag.bm25 import BM25Index
from proxy.rag.client import SidecarClient
from proxy.rag.config import ContextInjection, CorpusConfig, Fingerprint, RetrievalConfig, RewriteSettings, scan
from proxy.rag.errors import RetrievalInputError, RetrievalUnavailable, UnknownCorpusError
from proxy.rag.expansion import REWRITE_PROMPT, parse_rewrites
from proxy.rag.generator import AsyncRAGGenerator, best_passages
from proxy.rag.hybrid import DenseRetriever, HybridSearch, Rewriter, vector_retriever
from proxy.rag.indexer import read_documents
from proxy.rag.passage import Passage
from proxy.rag.store import VectorSearch, open_search
from proxy.request_body import decode, read_body

LOG = logging.getLogger("llm_sidecar.rag")

#: Response header telling how many retrieved passages were added to a call.
CONTEXT_PASSAGES_HEADER = "x-llm-sidecar-context-passages"


# -- observation seam -------------------------------------------------------------------------


class RetrievalObserver(Protocol):
    """Where retrieval reports to metrics; names and counts only, never queries or text."""

    def retrieved(self, corpus: str, seconds: float, passages: int) -> None: ...

    def indexed(self, corpus: str, seconds: float, files: int, chunks: int) -> None: ...


class NoRetrievalObserver:
    """Does nothing, so retrieval code never asks whether metrics are on."""

    def retrieved(self, corpus: str, seconds: float, passages: int) -> None:
        pass

    def indexed(self, corpus: str, seconds: float, files: int, chunks: int) -> None:
        pass


# -- corpora ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Corpus:
    """A configured corpus as loaded: its BM25 index (None in ``dense`` mode, which reads no files)."""

    name: str
    config: CorpusConfig
    index: BM25Index | None
    fingerprint: Fingerprint
    files: int

    @property
    def chunks(self) -> int:
        return len(self.index) if self.index is not None else 0


def load_corpus(name: str, corpus: CorpusConfig, extensions: Sequence[str], generator: AsyncRAGGenerator) -> Corpus:
    """Read and index a corpus (blocking; run it in an executor). Document ids are relative paths."""
    if corpus.mode == "dense":
        return Corpus(name, corpus, None, (), 0)
    fingerprint, documents = read_documents(corpus.path, extensions)
    return Corpus(name, corpus, generator.build_index(documents), fingerprint, len(documents))


class Retriever:
    """The sidecar's corpora and the queries over them. Start with ``start()``, stop with ``close()``.

    ``own_url`` gives the sidecar's own ``…/v1`` base once it listens: query
    embeddings and rewrites are calls through it. A corpus in ``dense`` or
    ``hybrid`` mode searches the configured vector store.
    """

    def __init__(
        self,
        config: RetrievalConfig,
        *,
        observer: RetrievalObserver | None = None,
        executor: Executor | None = None,
        own_url: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.config = config
        self.observer: RetrievalObserver = observer or NoRetrievalObserver()
        self.executor = executor
        self.own_url = own_url
        self.generator = AsyncRAGGenerator(
            config.chunk_size, config.overlap, chunking=config.chunking, executor=executor
        )
        self._corpora: dict[str, Corpus] = {}
        self._poller: asyncio.Task[None] | None = None
        self.store: VectorSearch | None = None
        self._session: aiohttp.ClientSession | None = None
        self.client: SidecarClient | None = None

    @property
    def corpora(self) -> dict[str, Corpus]:
        """The loaded corpora by name (a snapshot)."""
        return dict(self._corpora)

    async def start(self) -> None:
        """Index every configured corpus, then start polling for changes if configured."""
        if self.config.vector_store is not None and any(c.mode != "bm25" for c in self.config.corpora.values()):
            loop = asyncio.get_running_loop()
            # Only here (gRPC and Milvus's messages), and off the loop: importing takes a while.
            self.store = await loop.run_in_executor(self.executor, open_search, self.config.vector_store)
        if any(c.mode != "bm25" or c.expansion.rewrite for c in self.config.corpora.values()):
            self._session = aiohttp.ClientSession()
            self.client = SidecarClient(self._session, self.own_url)
        for name, corpus in self.config.corpora.items():
            await self._load(name, corpus)
        if self.config.reload_interval > 0 and self.config.corpora:
            self._poller = asyncio.create_task(self._poll(), name="retrieval-reload")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
            self._poller = None
        if self._session is not None:
            await self._session.close()
        if self.store is not None:
            await asyncio.get_running_loop().run_in_executor(self.executor, self.store.close)

    async def refresh(self) -> list[str]:
        """Re-index each corpus whose files changed since it was loaded; return their names."""
        loop = asyncio.get_running_loop()
        changed: list[str] = []
        for name, corpus in self.config.corpora.items():
            if corpus.mode == "dense":
                continue  # its files are the index command's business
            current = self._corpora.get(name)
            fingerprint = await loop.run_in_executor(self.executor, scan, corpus.path, self.config.extensions)
            if current is None or fingerprint != current.fingerprint:
                if await self._load(name, corpus):
                    changed.append(name)
        return changed

    async def _load(self, name: str, config: CorpusConfig) -> bool:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            corpus = await loop.run_in_executor(
                self.executor, load_corpus, name, config, self.config.extensions, self.generator
            )
        except Exception:  # a bad file must not take the sidecar down: keep serving the last index
            LOG.exception("retrieval corpus failed to load", extra={"fields": {"corpus": name}})
            return False
        self._corpora[name] = corpus  # one assignment: calls in flight keep the index they started on
        seconds = time.perf_counter() - started
        self.observer.indexed(name, seconds, corpus.files, corpus.chunks)
        LOG.info(
            "retrieval corpus indexed",
            extra={
                "fields": {
                    "corpus": name,
                    "mode": config.mode,
                    "files": corpus.files,
                    "chunks": corpus.chunks,
                    "seconds": seconds,
                }
            },
        )
        return True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_interval)
            try:
                await self.refresh()
            except Exception:
                LOG.exception("retrieval reload check failed")

    def stream(
        self, corpus: str, query: str, top_k: int | None = None, min_score: float | None = None
    ) -> AsyncIterator[Passage]:
        """Passages of ``corpus`` for ``query``, best first.

        Raises at the call: ``UnknownCorpusError`` for a corpus that is not
        configured, ``RetrievalInputError`` for an empty query or a ``top_k``
        outside 1..``max_top_k``. While iterating, ``RetrievalUnavailable`` when
        the vector store or the embeddings group fails a ``dense`` corpus (a
        ``hybrid`` one answers from BM25 alone then). ``min_score`` compares
        with the mode's score: BM25, cosine similarity, or the fused score.
        """
        loaded = self._corpora.get(corpus) if isinstance(corpus, str) else None
        if loaded is None:
            raise UnknownCorpusError(f"no retrieval corpus named {corpus!r}", param="corpus")
        k = self.config.default_top_k if top_k is None else top_k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.config.max_top_k:
            raise RetrievalInputError(
                f"top_k must be an integer from 1 to {self.config.max_top_k}, got {top_k!r}", param="top_k"
            )
        if not isinstance(query, str) or not query.strip():
            raise RetrievalInputError("query must be a non-empty string", param="query")
        if loaded.config.mode == "bm25" and not _expanded(loaded.config) and loaded.index is not None:
            passages = self.generator.stream_retrieval(query, loaded.index, top_k=k, min_score=min_score)
        else:
            passages = self._search(loaded, query, k, min_score)
        return self._observed(corpus, passages)

    async def _search(self, corpus: Corpus, query: str, top_k: int, min_score: float | None) -> AsyncIterator[Passage]:
        config = corpus.config
        dense: DenseRetriever | None = None
        rewriter: Rewriter | None = None
        if config.mode != "bm25":
            assert self.store is not None
            dense = vector_retriever(
                partial(self._embed_query, config), self.store, config.collection or corpus.name, self.executor
            )
        if config.expansion.rewrite is not None:
            rewriter = partial(self._rewrites, config.expansion.rewrite)
        search = HybridSearch(
            corpus.index, dense, config.fusion, config.expansion, rewriter, self.executor, corpus.name
        )
        for passage in best_passages(await search.rank(query, top_k), top_k, min_score):
            yield passage

    async def _embed_query(self, corpus: CorpusConfig, query: str) -> list[float]:
        settings = corpus.embeddings
        assert settings is not None and self.client is not None
        return (await self.client.embed(settings.model_group, [query], "query", settings.input_type))[0]

    async def _rewrites(self, settings: RewriteSettings, query: str) -> list[str]:
        assert self.client is not None
        answer = await self.client.chat(
            settings.model_group, REWRITE_PROMPT.format(count=settings.queries, question=query)
        )
        return parse_rewrites(answer, query, settings.queries)

    async def _observed(self, corpus: str, passages: AsyncIterator[Passage]) -> AsyncIterator[Passage]:
        started = time.perf_counter()
        count = 0
        try:
            async for passage in passages:
                count += 1
                yield passage
        finally:
            self.observer.retrieved(corpus, time.perf_counter() - started, count)

    async def retrieve(
        self, corpus: str, query: str, top_k: int | None = None, min_score: float | None = None
    ) -> list[Passage]:
        return [passage async for passage in self.stream(corpus, query, top_k, min_score)]

    async def inject_context(
        self, payload: dict[str, Any], dialect: str, settings: ContextInjection
    ) -> tuple[dict[str, Any], int]:
        """``payload`` with the top passages for its last user message added, and how many were added.

        The input is not modified. A call without user text, or whose text
        finds nothing, comes back unchanged with a count of 0.
        """
        query = last_user_text(payload, dialect)
        if not query or not query.strip():
            return payload, 0
        passages = await self.retrieve(settings.corpus, query, settings.top_k, settings.min_score)
        if not passages:
            return payload, 0
        return with_context(payload, dialect, format_context(passages)), len(passages)


def _expanded(corpus: CorpusConfig) -> bool:
    return corpus.expansion.feedback or corpus.expansion.rewrite is not None


# -- context injection (pure) -----------------------------------------------------------------


def format_context(passages: Sequence[Passage]) -> str:
    """The passages as numbered, sourced text for a system prompt."""
    parts = ["Relevant passages retrieved for this conversation (use them if they help; cite by number):"]
    for number, passage in enumerate(passages, 1):
        source = f"{passage.doc_id}: {passage.title}" if passage.title else passage.doc_id
        parts.append(f"[{number}] (source: {source})\n{passage.text}")
    return "\n\n".join(parts)


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts/blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def last_user_text(payload: dict[str, Any], dialect: str) -> str | None:
    """The text of the last ``user`` message of an OpenAI chat or Anthropic messages payload."""
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            text = _text_of(message.get("content"))
            if text:
                return text
    return None


def with_context(payload: dict[str, Any], dialect: str, context: str) -> dict[str, Any]:
    """A copy of ``payload`` with ``context`` as a leading system message (OpenAI) or system prefix (Anthropic)."""
    updated = dict(payload)
    if dialect == "openai":
        updated["messages"] = [{"role": "system", "content": context}, *payload.get("messages", [])]
    elif dialect == "anthropic":
        system = payload.get("system")
        if isinstance(system, list):
            updated["system"] = [{"type": "text", "text": context}, *system]
        elif isinstance(system, str) and system:
            updated["system"] = f"{context}\n\n{system}"
        else:
            updated["system"] = context
    else:
        raise ValueError(f"unknown dialect {dialect!r}")
    return updated


# -- HTTP -------------------------------------------------------------------------------------

RETRIEVER = web.AppKey("retriever", Retriever)


def retriever_ctx(
    config: RetrievalConfig,
    observer: RetrievalObserver | None = None,
    own_url: Callable[[], str | None] = lambda: None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry that starts a ``Retriever`` into ``app[RETRIEVER]`` and closes it."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        retriever = Retriever(config, observer=observer, own_url=own_url)
        await retriever.start()
        app[RETRIEVER] = retriever
        yield
        await retriever.close()

    return context


def _error(
    status: int, message: str, param: str | None, code: str | None = None, kind: str | None = None
) -> web.Response:
    kind = kind or ("not_found_error" if status == 404 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _passage_body(rank: int, passage: Passage) -> dict[str, Any]:
    return {
        "rank": rank,
        "doc_id": passage.doc_id,
        "text": passage.text,
        "start": passage.start,
        "end": passage.end,
        "score": passage.score,
        "title": passage.title,
    }


async def handle_retrieve(request: web.Request) -> web.StreamResponse:
    """``POST /v1/retrieve`` with ``{"corpus", "query", "top_k"?}``: passages, streamed best first.

    NDJSON by default (one JSON object per line); SSE (``data:`` frames ending
    with ``data: [DONE]``) when ``Accept`` includes ``text/event-stream``.
    """
    retriever = request.app[RETRIEVER]
    try:
        body = orjson.loads(
            decode(await read_body(request), request.headers.get("Content-Encoding"), request.client_max_size)
        )
    except orjson.JSONDecodeError as exc:
        return _error(400, f"request body is not valid JSON: {exc}", None)
    except ProxyError as exc:  # an undecodable, oversized or stalled body
        return _error(exc.status, exc.message, None, kind=exc.type if exc.status == 408 else None)
    if not isinstance(body, dict):
        return _error(400, "request body must be a JSON object", None)
    corpus, query = body.get("corpus"), body.get("query")
    if not isinstance(corpus, str) or not corpus:
        return _error(400, "corpus must be a non-empty string", "corpus")
    if not isinstance(query, str):
        return _error(400, "query must be a non-empty string", "query")
    try:
        passages = retriever.stream(corpus, query, body.get("top_k"))
    except UnknownCorpusError as exc:
        return _error(404, exc.message, exc.param, "corpus_not_found")
    except RetrievalInputError as exc:
        return _error(400, exc.message, exc.param)
    # The first passage before the headers: a dense corpus whose store or embeddings
    # are down is then a plain 503, not a stream that ends in an error.
    iterator = aiter(passages)
    try:
        first = await anext(iterator, None)
    except RetrievalUnavailable as exc:
        return _error(exc.status, exc.message, None, "retrieval_unavailable", exc.type)

    sse = "text/event-stream" in request.headers.get("Accept", "")
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream" if sse else "application/x-ndjson", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    rank = 0
    try:
        passage = first
        while passage is not None:
            rank += 1
            data = orjson.dumps(_passage_body(rank, passage))
            await response.write(b"data: " + data + b"\n\n" if sse else data + b"\n")
            passage = await anext(iterator, None)
    except ConnectionResetError:
        raise  # the caller left; nothing more can be written
    except Exception as exc:  # after the headers, an error can only end the stream, in its format
        LOG.exception("retrieval failed mid-stream", extra={"fields": {"corpus": corpus}})
        error = orjson.dumps({"error": {"message": str(exc), "type": "api_error", "param": None, "code": None}})
        await response.write(b"data: " + error + b"\n\n" if sse else error + b"\n")
    if sse:
        await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response
