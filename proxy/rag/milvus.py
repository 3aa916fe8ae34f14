"""Milvus search for the sidecar: one gRPC call, with Milvus's own generated messages.

Milvus Lite 3.x serves the same gRPC API as a Milvus server (``milvus-lite server
--data-dir DIR --host 127.0.0.1 --port 19530``), so this one path serves both.
The sidecar needs only ``Search``, and pymilvus's client would bring pandas and
pyarrow into every pod (~150 MB of RSS against the sidecar's ~55 MB), so the
messages and service stub that pymilvus generates from Milvus's protocol files
are loaded on their own (gRPC and the stubs: ~13 MB); the request is the one
pymilvus builds for ``MilvusClient.search`` on a float-vector field. The channel
connects on first use, so a store that is down at start-up fails the calls that
need it, not the sidecar. Every gRPC error becomes ``VectorStoreError`` here.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import struct
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import grpc

from proxy.rag.config import VectorStoreConfig
from proxy.rag.errors import VectorStoreError
from proxy.rag.passage import Passage
from proxy.rag.store import collection_name

_FIELDS = ["doc_id", "text", "title", "start", "end"]
_PACKAGE = "_llm_sidecar_milvus_messages"


def _messages() -> ModuleType:
    """pymilvus's ``grpc_gen`` package, loaded under a name of its own so ``pymilvus/__init__`` never runs."""
    if _PACKAGE in sys.modules:
        return sys.modules[_PACKAGE]
    spec = importlib.util.find_spec("pymilvus")  # finds the package without importing it
    if spec is None or spec.origin is None:
        raise VectorStoreError("the Milvus client is not installed: pip install 'llm-sidecar[rag]'")
    directory = Path(spec.origin).parent / "grpc_gen"
    package = importlib.util.spec_from_file_location(
        _PACKAGE, directory / "__init__.py", submodule_search_locations=[str(directory)]
    )
    assert package is not None and package.loader is not None
    module = importlib.util.module_from_spec(package)
    sys.modules[_PACKAGE] = module
    package.loader.exec_module(module)
    return module


class MilvusSearch:
    def __init__(self, config: VectorStoreConfig) -> None:
        self.config = config
        self.messages = _messages()
        address = urlsplit(config.uri if "://" in config.uri else "http://" + config.uri)
        self.target = f"{address.hostname}:{address.port or 19530}"
        self.secure = address.scheme == "https"
        token = os.environ.get(config.token_env, "") if config.token_env else ""
        self.metadata = [("authorization", base64.b64encode(token.encode()).decode())] if token else []
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: Any = None

    def _connected(self) -> Any:
        with self._lock:
            if self._stub is None:
                if self.secure:
                    self._channel = grpc.secure_channel(self.target, grpc.ssl_channel_credentials())
                else:
                    self._channel = grpc.insecure_channel(self.target)
                self._stub = self.messages.milvus_pb2_grpc.MilvusServiceStub(self._channel)
            return self._stub

    def _request(self, collection: str, vector: Sequence[float], top_k: int) -> Any:
        common, milvus = self.messages.common_pb2, self.messages.milvus_pb2
        placeholder = common.PlaceholderGroup(
            placeholders=[
                common.PlaceholderValue(
                    tag="$0",
                    type=common.PlaceholderType.FloatVector,
                    values=[struct.pack(f"<{len(vector)}f", *vector)],
                )
            ]
        )
        params = {
            "topk": top_k,
            "round_decimal": -1,
            "ignore_growing": False,
            "metric_type": "COSINE",
            "anns_field": "vector",
            "params": {"ef": max(self.config.search_breadth, top_k)},
        }
        return milvus.SearchRequest(
            collection_name=collection_name(self.config, collection),
            output_fields=_FIELDS,
            dsl_type=common.DslType.BoolExprV1,
            search_params=[common.KeyValuePair(key=k, value=json.dumps(v)) for k, v in params.items()],
            nq=1,
            placeholder_group=placeholder.SerializeToString(),
            use_default_consistency=True,
        )

    def search(self, collection: str, vector: Sequence[float], top_k: int) -> list[Passage]:
        request = self._request(collection, vector, top_k)
        try:
            answer = self._connected().Search(request, timeout=self.config.timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            raise VectorStoreError(f"vector store search failed: {exc.code().name}: {detail}") from None
        if answer.status.code != 0 or answer.status.error_code != 0:
            raise VectorStoreError(f"vector store search failed: {answer.status.reason}")
        return _passages(answer.results)

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel, self._stub = None, None


def _passages(results: Any) -> list[Passage]:
    """The hits of a one-query ``SearchResultData``, best first, with their output fields."""
    count = len(results.scores)
    columns: dict[str, Sequence[Any]] = {}
    for field in results.fields_data:
        scalars = field.scalars
        kind = scalars.WhichOneof("data")
        columns[field.field_name] = getattr(scalars, kind).data if kind else ()
    try:
        return [
            Passage(
                columns["doc_id"][i],
                columns["text"][i],
                int(columns["start"][i]),
                int(columns["end"][i]),
                float(results.scores[i]),
                columns["title"][i],
            )
            for i in range(count)
        ]
    except (KeyError, IndexError):
        raise VectorStoreError(f"vector store search answered without the fields {', '.join(_FIELDS)}") from None
