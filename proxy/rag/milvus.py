"""Milvus as the vector store (``pymilvus``): a Milvus server, or Milvus Lite run as its own process.

Milvus Lite 3.x serves the same gRPC API as a server (``milvus-lite server
--data-dir DIR --host 127.0.0.1 --port 19530``), so this one client path serves
both. Vectors are indexed with HNSW under cosine similarity; the search breadth
(``ef``) comes from the config because the default is far too narrow for 384
dimensions (see docs/retrieval.md). The client connects on first use, so a
store that is down at start-up is an error for the calls that need it, not for
the sidecar. Every pymilvus exception becomes ``VectorStoreError`` here.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pymilvus import DataType, MilvusClient, MilvusException

from proxy.rag.config import VectorStoreConfig
from proxy.rag.errors import VectorStoreError
from proxy.rag.passage import Passage
from proxy.rag.store import StoredChunk

T = TypeVar("T")
_FIELDS = ["doc_id", "text", "title", "start", "end"]
_TEXT_LIMIT = 65_535
_NAME = re.compile(r"[^A-Za-z0-9_]")


class MilvusStore:
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
        return _NAME.sub("_", self.config.collection_prefix + collection)

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

    def search(self, collection: str, vector: Sequence[float], top_k: int) -> list[Passage]:
        def run(client: MilvusClient) -> list[Passage]:
            hits = client.search(
                self.name(collection),
                data=[list(vector)],
                limit=top_k,
                output_fields=_FIELDS,
                search_params={"metric_type": "COSINE", "params": {"ef": max(self.config.search_breadth, top_k)}},
                timeout=self.config.timeout,
            )[0]
            return [
                Passage(
                    hit["entity"]["doc_id"],
                    hit["entity"]["text"],
                    int(hit["entity"]["start"]),
                    int(hit["entity"]["end"]),
                    float(hit["distance"]),
                    hit["entity"]["title"],
                )
                for hit in hits
            ]

        return self._call("search", run)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
