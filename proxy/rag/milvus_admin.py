"""Milvus administration with ``pymilvus``: collections, inserts and deletes for ``llm-sidecar index``.

The index command is its own process, so it can afford pymilvus (with pandas
and pyarrow, ~150 MB); the sidecar searches through ``proxy/rag/milvus.py``
instead. Vectors are indexed with HNSW (M 16, efConstruction 200) under cosine
similarity. Every pymilvus exception becomes ``VectorStoreError`` here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pymilvus import DataType, MilvusClient, MilvusException

from proxy.rag.config import VectorStoreConfig
from proxy.rag.errors import VectorStoreError
from proxy.rag.store import StoredChunk, collection_name

T = TypeVar("T")
_TEXT_LIMIT = 65_535


class MilvusAdmin:
    def __init__(self, config: VectorStoreConfig) -> None:
        self.config = config
        self._client: MilvusClient | None = None
        self._lock = threading.Lock()

    def _connected(self) -> MilvusClient:
        with self._lock:
            if self._client is None:
                token = os.environ.get(self.config.token_env, "") if self.config.token_env else ""
                self._client = MilvusClient(uri=self.config.uri, token=token, timeout=self.config.timeout)
            return self._client

    def _call(self, what: str, action: Callable[[MilvusClient], T]) -> T:
        try:
            return action(self._connected())
        except MilvusException as exc:
            raise VectorStoreError(f"vector store {what} failed: {exc.message}") from None
        except Exception as exc:  # gRPC and connection errors arrive in several types
            raise VectorStoreError(f"vector store {what} failed: {type(exc).__name__}: {exc}") from None

    def name(self, collection: str) -> str:
        return collection_name(self.config, collection)

    def ensure(self, collection: str, dimension: int) -> None:
        def create(client: MilvusClient) -> None:
            if client.has_collection(self.name(collection)):
                return
            schema = client.create_schema(auto_id=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
            schema.add_field("doc_id", DataType.VARCHAR, max_length=1024)
            schema.add_field("text", DataType.VARCHAR, max_length=_TEXT_LIMIT)
            schema.add_field("title", DataType.VARCHAR, max_length=1024)
            schema.add_field("start", DataType.INT64)
            schema.add_field("end", DataType.INT64)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
            index = client.prepare_index_params()
            index.add_index(
                field_name="vector", index_type="HNSW", metric_type="COSINE", params={"M": 16, "efConstruction": 200}
            )
            client.create_collection(self.name(collection), schema=schema, index_params=index)

        self._call("create collection", create)

    def ids(self, collection: str) -> set[str]:
        def read(client: MilvusClient) -> set[str]:
            name = self.name(collection)
            if not client.has_collection(name):
                return set()
            found: set[str] = set()
            iterator = client.query_iterator(name, batch_size=1000, filter='id != ""', output_fields=["id"])
            try:
                while batch := iterator.next():
                    found.update(row["id"] for row in batch)
            finally:
                iterator.close()
            return found

        return self._call("listing", read)

    def add(self, collection: str, rows: Sequence[StoredChunk]) -> None:
        data: list[dict[str, Any]] = [
            {
                "id": row.id,
                "doc_id": str(row.chunk.doc_id)[:1024],
                # Milvus counts bytes; the text is for display, the vector was made from all of it.
                "text": row.chunk.text.encode("utf-8")[:_TEXT_LIMIT].decode("utf-8", "ignore"),
                "title": row.chunk.title[:300],
                "start": row.chunk.start,
                "end": row.chunk.end,
                "vector": list(row.vector),
            }
            for row in rows
        ]
        if data:
            self._call("insert", lambda client: client.upsert(self.name(collection), data))

    def remove(self, collection: str, ids: Sequence[str]) -> None:
        if ids:
            self._call("delete", lambda client: client.delete(self.name(collection), ids=list(ids)))

    def flush(self, collection: str) -> None:
        # Rows wait in a growing segment until flushed, and a growing segment is searched
        # without the index: in Milvus Lite, by brute force (0.7 s a query at 10,000 rows).
        self._call("flush", lambda client: client.flush(self.name(collection)))

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
