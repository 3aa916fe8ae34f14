"""A corpus's mode, embeddings and store are checked at start-up: ``llm-sidecar check-config`` and ``index``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.servers import LLM_SIDECAR


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LLM_SIDECAR, *args], capture_output=True, text=True, timeout=60)


def config(tmp_path: Path, corpus: dict, **retrieval: object) -> Path:
    docs = tmp_path / "kb"
    docs.mkdir(exist_ok=True)
    (docs / "a.md").write_text("Redis is an in-memory store.")
    body = {
        "model_groups": {"chat": {"endpoints": [{"name": "e", "url": "http://127.0.0.1:9/v1", "api_key": "sk-x"}]}},
        "retrieval": {"corpora": {"kb": {"path": str(docs), **corpus}}, **retrieval},
    }
    path = tmp_path / "sidecar.json"
    path.write_text(json.dumps(body))
    return path


def test_a_dense_corpus_needs_embeddings_a_known_group_and_a_store(tmp_path: Path) -> None:
    checked = run("check-config", str(config(tmp_path, {"mode": "hybrid"})))
    assert checked.returncode != 0
    assert "retrieval.corpora.kb: mode hybrid needs embeddings: {model_group: …}" in checked.stderr

    checked = run("check-config", str(config(tmp_path, {"mode": "dense", "embeddings": {"model_group": "embed"}})))
    assert checked.returncode != 0
    assert "retrieval.corpora.kb.embeddings.model_group: unknown model group 'embed'" in checked.stderr
    assert "corpora kb search vectors: retrieval.vector_store must be set" in checked.stderr

    rewrite = {"expansion": {"rewrite": {"model_group": "writer"}}}
    checked = run("check-config", str(config(tmp_path, rewrite)))
    assert "retrieval.corpora.kb.expansion.rewrite.model_group: unknown model group 'writer'" in checked.stderr


def test_a_bare_path_is_still_a_bm25_corpus(tmp_path: Path) -> None:
    path = config(tmp_path, {})
    body = json.loads(path.read_text())
    body["retrieval"]["corpora"]["kb"] = body["retrieval"]["corpora"]["kb"]["path"]
    path.write_text(json.dumps(body))
    assert run("check-config", str(path)).returncode == 0


def test_index_without_a_dense_corpus_says_so(tmp_path: Path) -> None:
    # One line with the prefix every other usage or config error has.
    done = run("index", "--config", str(config(tmp_path, {})))
    assert done.returncode == 2 and done.stderr.splitlines() == ["llm-sidecar: no dense or hybrid corpus to index"]
    done = run("index", "--config", str(config(tmp_path, {})), "--corpus", "nope")
    assert done.returncode == 2 and done.stderr.splitlines() == ["llm-sidecar: no corpus named nope in the config"]
