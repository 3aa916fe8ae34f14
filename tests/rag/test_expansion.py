"""Query expansion in a running sidecar: RM3 feedback and an LLM rewrite (the mock provider), BM25 corpora."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from proxy.rag.bm25 import BM25Index
from proxy.rag.expansion import parse_rewrites, rm3_query
from proxy.rag.fusion import fuse
from proxy.rag.passage import Chunk, Passage

DOCUMENTS = {
    "sidecar.md": "Kubernetes pods run containers. A sidecar container shares the pod network with the app.",
    "probes.md": "Pods and containers: the kubelet restarts a container in a pod that fails its liveness probe.",
    "bread.md": "Bread needs flour, water, salt and time.",
    # every word the mock provider answers with: whatever it says, a rewrite finds this one
    "fox.md": "the quick brown fox jumps over a lazy dog while seven wizards quietly brew strong coffee beside "
    "silver rivers under golden autumn skies and distant mountains echo with curious songs of patient engineers "
    "building careful systems",
}


def corpus_sidecar(make_sidecar: Any, tmp_path: Path, **corpus: Any) -> Any:
    directory = tmp_path / "kb"
    directory.mkdir(exist_ok=True)
    for name, text in DOCUMENTS.items():
        (directory / name).write_text(text)
    retrieval = {"corpora": {"kb": {"path": str(directory), **corpus}}, "reload_interval": 0}
    return make_sidecar(retrieval=retrieval)


def found(sidecar: Any, query: str) -> list[str]:
    response = httpx.post(sidecar.openai_base + "/retrieve", json={"corpus": "kb", "query": query, "top_k": 5})
    assert response.status_code == 200, response.text
    return [json.loads(line)["doc_id"] for line in response.text.splitlines()]


def test_feedback_finds_a_passage_that_shares_words_with_the_first_results_only(make_sidecar, tmp_path) -> None:
    plain = corpus_sidecar(make_sidecar, tmp_path)
    assert found(plain, "sidecar") == ["sidecar.md"]
    expanded = corpus_sidecar(make_sidecar, tmp_path, expansion={"feedback": True, "feedback_passages": 1})
    assert found(expanded, "sidecar")[:2] == ["sidecar.md", "probes.md"]


def test_a_rewrite_goes_through_the_sidecar_is_fused_and_cached(make_sidecar, mock_provider, tmp_path) -> None:
    assert "fox.md" not in found(corpus_sidecar(make_sidecar, tmp_path), "sidecar")
    rewrite = {"rewrite": {"model_group": "gpt-4o-mini", "queries": 2}}
    sidecar = corpus_sidecar(make_sidecar, tmp_path, expansion=rewrite)
    first = found(sidecar, "sidecar")
    assert "sidecar.md" in first and "fox.md" in first
    asked = mock_provider.requests()[-1]["body"]
    assert "Question: sidecar" in asked["messages"][0]["content"] and asked["temperature"] == 0
    calls = len(mock_provider.requests())
    assert found(sidecar, "sidecar") == first
    assert len(mock_provider.requests()) == calls  # the same question's rewrite came from the cache


def test_a_failed_rewrite_leaves_the_question_alone(make_sidecar, mock_provider, tmp_path) -> None:
    mock_provider.set_behaviour("mock-gpt", status=500)
    sidecar = corpus_sidecar(make_sidecar, tmp_path, expansion={"rewrite": {"model_group": "gpt-4o-mini"}})
    assert found(sidecar, "sidecar") == ["sidecar.md"]


def test_rm3_keeps_the_query_and_adds_weighted_feedback_terms() -> None:
    index = BM25Index.build(Chunk(name, text, 0, len(text)) for name, text in DOCUMENTS.items())
    top = index.search("sidecar", 1)
    weights = rm3_query(index, "sidecar", top, terms=5, original_weight=0.6)
    assert weights["sidecar"] > 0.6 and abs(sum(weights.values()) - 1.0) < 1e-9
    # Rare words of the feedback passage come in; "the", in most documents, does not.
    assert len(weights) == 5 and "kubernetes" in weights and "the" not in weights
    assert rm3_query(index, "sidecar", [], 5) == {"sidecar": 0.6}


def test_rewrites_are_parsed_from_a_list_without_the_question() -> None:
    answer = '1. asyncio event loop\n- "Python coroutines"\n\nSidecar\n* third one\n4) fourth'
    assert parse_rewrites(answer, "sidecar", 3) == ["asyncio event loop", "Python coroutines", "third one"]


def test_fusion_adds_weighted_reciprocal_ranks_per_chunk() -> None:
    a, b, c = (Passage(name, name, 0, 1, 0.0) for name in "abc")
    fused = fuse([(1.0, [a, b]), (2.0, [c, a])], rank_constant=1)
    # a: 1/2 + 2/3, c: 2/2, b: 1/3
    assert [p.doc_id for p in fused] == ["a", "c", "b"]
    assert [round(p.score, 4) for p in fused] == [round(1 / 2 + 2 / 3, 4), 1.0, round(1 / 3, 4)]
