"""The vector store seam: what dense retrieval needs from a vector database, and nothing more.

A store keeps, per collection, chunks with their vectors under a content id
(``chunk_id``), so that a re-index adds and removes only what changed. Its calls
block (clients of vector databases are mostly synchronous); the retriever runs
them in a thread. Milvus is ``proxy/rag/milvus.py``; another engine (Qdrant,
pgvector, Redis) is one more module with these five methods and a line in
``open_store``. Failures are raised as ``VectorStoreError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from proxy.rag.config import VectorStoreConfig
from proxy.rag.passage import Chunk, Passage


@dataclass(frozen=True, slots=True)
class StoredChunk:
    id: str
    chunk: Chunk
    vector: Sequence[float]


class VectorStore(Protocol):
    def ensure(self, collection: str, dimension: int) -> None:
        """Create ``collection`` for vectors of ``dimension`` (with its index) unless it exists."""

    def ids(self, collection: str) -> set[str]:
        """The ids of every chunk in ``collection``; empty if it does not exist."""

    def add(self, collection: str, rows: Sequence[StoredChunk]) -> None: ...

    def remove(self, collection: str, ids: Sequence[str]) -> None: ...

    def search(self, collection: str, vector: Sequence[float], top_k: int) -> list[Passage]:
        """The ``top_k`` nearest chunks, best first; ``score`` is the cosine similarity."""

    def close(self) -> None: ...


def chunk_id(chunk: Chunk, model_group: str) -> str:
    """A chunk's content id: the same text at the same place, embedded by the same group, is the same row."""
    identity = "\x1f".join((model_group, str(chunk.doc_id), str(chunk.start), str(chunk.end), chunk.title, chunk.text))
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]


def open_store(config: VectorStoreConfig) -> VectorStore:
    """The store ``config`` names; its client library is imported here, not before."""
    from proxy.rag.milvus import MilvusStore

    return MilvusStore(config)
