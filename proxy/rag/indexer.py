"""Putting a corpus's vectors into the vector store: ``llm-sidecar index`` and its library face.

A corpus is read and chunked exactly as the sidecar does for BM25, so both sides
name a chunk by the same (document, start, end). Each chunk's content id
(``chunk_id``) says whether the store already has it: only new chunks are
embedded (in batches, through the sidecar's embeddings route), chunks that are
gone are deleted, and the rest are left alone. Batches are stored as they come
back, so an interrupted run keeps what it embedded.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from proxy.config import Config
from proxy.rag.chunking import chunk_documents, make_chunker
from proxy.rag.client import SidecarClient
from proxy.rag.config import CorpusConfig, Fingerprint, RetrievalConfig, VectorStoreConfig, scan
from proxy.rag.errors import RetrievalUnavailable
from proxy.rag.passage import Chunk
from proxy.rag.store import StoredChunk, VectorStore, chunk_id, open_store


@dataclass(frozen=True, slots=True)
class IndexReport:
    corpus: str
    chunks: int
    embedded: int
    kept: int
    removed: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"{self.corpus}: {self.chunks} chunks: {self.embedded} embedded, {self.kept} unchanged, "
            f"{self.removed} removed ({self.seconds:.1f} s)"
        )


def read_documents(directory: Path, extensions: Sequence[str]) -> tuple[Fingerprint, dict[str, str]]:
    """The corpus's fingerprint and its documents by relative path (blocking)."""
    fingerprint = scan(directory, extensions)
    documents = {
        relative: (directory / relative).read_text(encoding="utf-8", errors="replace") for relative, *_ in fingerprint
    }
    return fingerprint, documents


def corpus_chunks(corpus: CorpusConfig, retrieval: RetrievalConfig) -> list[Chunk]:
    """Every chunk of the corpus's files, as the sidecar's BM25 index cuts them (blocking)."""
    _, documents = read_documents(corpus.path, retrieval.extensions)
    chunker = make_chunker(retrieval.chunking, retrieval.chunk_size, retrieval.overlap)
    return list(chunk_documents(list(documents.items()), chunker))


async def index_corpus(name: str, retrieval: RetrievalConfig, store: VectorStore, client: SidecarClient) -> IndexReport:
    """Bring the store's collection for corpus ``name`` up to date with its files."""
    started = time.perf_counter()
    corpus = retrieval.corpora[name]
    settings = corpus.embeddings
    if settings is None:
        raise ValueError(f"corpus {name!r} has no embeddings: it is searched with BM25 only")
    collection = corpus.collection or name
    chunks = await asyncio.to_thread(corpus_chunks, corpus, retrieval)
    wanted = {chunk_id(chunk, settings.model_group): chunk for chunk in chunks}
    present = await asyncio.to_thread(store.ids, collection)
    new = [(key, chunk) for key, chunk in wanted.items() if key not in present]
    created = bool(present)
    for start in range(0, len(new), settings.batch_size):
        batch = new[start : start + settings.batch_size]
        vectors = await client.embed(
            settings.model_group, [chunk.indexed_text for _, chunk in batch], "passage", settings.input_type
        )
        if not created:
            await asyncio.to_thread(store.ensure, collection, len(vectors[0]))
            created = True
        rows = [StoredChunk(key, chunk, vector) for (key, chunk), vector in zip(batch, vectors)]
        await asyncio.to_thread(store.add, collection, rows)
    gone = sorted(present - wanted.keys())
    await asyncio.to_thread(store.remove, collection, gone)
    if new or gone:
        await asyncio.to_thread(store.flush, collection)
    return IndexReport(name, len(wanted), len(new), len(wanted) - len(new), len(gone), time.perf_counter() - started)


def run_index(config: Config, names: Sequence[str] | None = None) -> int:
    """``llm-sidecar index``: every dense or hybrid corpus (or ``names``), one report line each; 1 on a failure."""
    retrieval = config.retrieval
    dense = [name for name, corpus in retrieval.corpora.items() if corpus.mode != "bm25"]
    unknown = [name for name in names or () if name not in retrieval.corpora]
    if unknown:
        print(f"llm-sidecar: no corpus named {', '.join(unknown)} in the config", file=sys.stderr)
        return 2
    chosen = [name for name in dense if not names or name in names]
    if not chosen or retrieval.vector_store is None:
        print("llm-sidecar: no dense or hybrid corpus to index", file=sys.stderr)
        return 2
    return asyncio.run(_index_all(config, retrieval.vector_store, chosen))


async def _index_all(config: Config, store_config: VectorStoreConfig, names: Sequence[str]) -> int:
    from proxy.server import Servers

    # The embeddings go through a sidecar of this same config, on a free loopback port.
    server = config.server.model_copy(update={"host": "127.0.0.1", "port": 0, "admin_port": 0})
    servers = Servers(config.model_copy(update={"server": server, "retrieval": RetrievalConfig()}))
    await servers.start()
    store = await asyncio.to_thread(open_store, store_config)
    failed = 0
    try:
        async with aiohttp.ClientSession() as session:
            client = SidecarClient(session, lambda: f"http://127.0.0.1:{servers.port}/v1")
            for name in names:
                try:
                    print(await index_corpus(name, config.retrieval, store, client), flush=True)
                except RetrievalUnavailable as exc:
                    print(f"{name}: failed: {exc.message}", file=sys.stderr, flush=True)
                    failed += 1
    finally:
        await asyncio.to_thread(store.close)
        await servers.stop()
    return 1 if failed else 0
