"""The vector store seam: what dense retrieval needs from a vector database, and nothing more.

Two faces, because they live in different processes:

* ``VectorSearch`` (``search``, ``close``) is all the sidecar needs, and what it
  loads must stay small: the sidecar's memory is the pod's cost.
* ``VectorStore`` (``ensure``, ``ids``, ``add``, ``remove``, ``flush``, ``close``) is for
  ``llm-sidecar index``: per collection, chunks and their vectors under a
  content id (``chunk_id``), so that a re-index adds and removes only what changed.

Calls block (clients of vector databases are mostly synchronous); callers run
them in a thread. Failures are raised as ``VectorStoreError``. Milvus is
``milvus.py`` (search) and ``milvus_admin.py`` (the rest); another engine
(Qdrant, pgvector, Redis) is a module with both faces and a line in each ``open_``.
"""

from __future__ import annotations

import hashlib
import re
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


class VectorSearch(Protocol):
    def search(self, collection: str, vector: Sequence[float], top_k: int) -> list[Passage]:
        """The ``top_k`` nearest chunks, best first; ``score`` is the cosine similarity."""

    def close(self) -> None: ...


class VectorStore(Protocol):
    def ensure(self, collection: str, dimension: int) -> None:
        """Create ``collection`` for vectors of ``dimension`` (with its index) unless it exists."""

    def ids(self, collection: str) -> set[str]:
        """The ids of every chunk in ``collection``; empty if it does not exist."""

    def add(self, collection: str, rows: Sequence[StoredChunk]) -> None: ...

    def remove(self, collection: str, ids: Sequence[str]) -> None: ...

    def flush(self, collection: str) -> None:
        """Make what was added and removed durable and searchable through the index (not by brute force)."""

    def close(self) -> None: ...


def chunk_id(chunk: Chunk, model_group: str) -> str:
    """A chunk's content id: the same text at the same place, embedded by the same group, is the same row."""
    identity = "\x1f".join((model_group, str(chunk.doc_id), str(chunk.start), str(chunk.end), chunk.title, chunk.text))
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]


def collection_name(config: VectorStoreConfig, collection: str) -> str:
    """The store's name for a corpus's collection: the prefix, and letters, digits and ``_`` only."""
    return re.sub(r"[^A-Za-z0-9_]", "_", config.collection_prefix + collection)


def open_search(config: VectorStoreConfig) -> VectorSearch:
    """The sidecar's search client for ``config``; its modules are imported here, not before."""
    from proxy.rag.milvus import MilvusSearch

    return MilvusSearch(config)


def open_store(config: VectorStoreConfig) -> VectorStore:
    """The index command's client for ``config``; its library is imported here, not before."""
    from proxy.rag.milvus_admin import MilvusAdmin

    return MilvusAdmin(config)
