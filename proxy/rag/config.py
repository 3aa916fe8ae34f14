"""The ``retrieval`` config section and the per-model-group ``context`` switch.

Kept apart from ``service.py`` so that loading a config does not load the
retrieval machinery: a sidecar without corpora never imports it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from proxy.validation import invalid, problem

Fingerprint = tuple[tuple[str, int, int, int], ...]


def scan(directory: Path, extensions: Sequence[str]) -> Fingerprint:
    """The fingerprint of every matching file under ``directory``; empty if it does not exist."""
    found: list[tuple[str, int, int, int]] = []
    if not directory.is_dir():
        return ()
    for root, dirs, files in os.walk(directory, followlinks=True):
        # Kubernetes keeps a ConfigMap's real files in hidden, timestamped directories
        # behind "..data"; the visible names are symlinks into them. Skip the hidden ones.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not name.endswith(tuple(extensions)):
                continue
            path = os.path.join(root, name)
            try:
                info = os.stat(path)
            except OSError:
                continue  # removed between listing and stat; the next scan will agree
            found.append((os.path.relpath(path, directory), info.st_mtime_ns, info.st_size, info.st_ino))
    return tuple(found)


class ContextInjection(BaseModel):
    """Per model group: retrieve from ``corpus`` with the last user message and add ``top_k`` passages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    corpus: str
    top_k: int = Field(3, ge=1, le=50)
    #: passages scoring below this are not added (None: any positive score)
    min_score: float | None = None


Mode = Literal["bm25", "dense", "hybrid"]


class EmbeddingsSettings(BaseModel):
    """Where a corpus's vectors come from: a model group of this sidecar that serves ``/v1/embeddings``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_group: str
    #: texts per embeddings call when indexing
    batch_size: int = Field(32, ge=1, le=2048)
    #: send ``input_type: query|passage`` (e5, Voyage and Cohere-style servers embed the two
    #: differently); OpenAI's embeddings API rejects the field, so it is off by default
    input_type: bool = False


class FusionSettings(BaseModel):
    """Reciprocal rank fusion: a passage scores ``weight / (rank_constant + rank)`` in each list it is in.

    The defaults are the best of those measured on the labelled set (docs/retrieval.md): BM25 at half
    the dense list's weight, and a rank constant of 10 rather than the usual 60, so that the lists' top
    places count for more than agreement further down.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    bm25_weight: float = Field(0.5, ge=0)
    dense_weight: float = Field(1.0, ge=0)
    rank_constant: int = Field(10, ge=1)
    #: passages each list contributes before fusion
    candidates: int = Field(30, ge=1, le=1000)


class RewriteSettings(BaseModel):
    """An LLM rewrites the question into ``queries`` search queries; each is retrieved and all are fused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_group: str
    queries: int = Field(3, ge=1, le=10)


class ExpansionSettings(BaseModel):
    """Query expansion; each kind is off by default (see the evaluation in docs/retrieval.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: pseudo-relevance feedback (RM3-style): terms of the top BM25 passages added to the BM25 query
    feedback: bool = False
    feedback_passages: int = Field(3, ge=1, le=50)
    feedback_terms: int = Field(10, ge=1, le=100)
    #: weight of the original query against the feedback terms (RM3's lambda)
    feedback_original_weight: float = Field(0.6, gt=0, le=1)
    rewrite: RewriteSettings | None = None


class CorpusConfig(BaseModel):
    """One corpus: its files and how it is searched. A bare path in the config means ``{path: …}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: directory of text files; read by the sidecar for ``bm25``/``hybrid`` and by ``llm-sidecar index``
    path: Path
    mode: Mode = "bm25"
    embeddings: EmbeddingsSettings | None = None
    #: the vector store's collection; the corpus name by default
    collection: str | None = None
    fusion: FusionSettings = FusionSettings()
    expansion: ExpansionSettings = ExpansionSettings()

    @model_validator(mode="after")
    def _dense_needs_embeddings(self) -> CorpusConfig:
        if self.mode != "bm25" and self.embeddings is None:
            raise ValueError(f"mode {self.mode} needs embeddings: {{model_group: …}}")
        return self


class VectorStoreConfig(BaseModel):
    """The vector database every pod queries (Milvus: a server, or Milvus Lite run as its own process)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["milvus"] = "milvus"
    #: gRPC address, e.g. http://milvus.search:19530 or http://127.0.0.1:19530 for Milvus Lite
    uri: str
    #: environment variable holding the token (``user:password`` or an API key), if the store needs one
    token_env: str | None = None
    #: collection names are this prefix + the corpus's collection
    collection_prefix: str = "llm_sidecar_"
    #: HNSW search breadth (``ef``): 512 finds 0.96 of an exact search's top 10 over 10,000 random
    #: vectors, the hardest case; 128 only 0.66 (see docs/retrieval.md)
    search_breadth: int = Field(512, ge=1, le=32768)
    #: seconds a search may take before the dense side of a query counts as failed
    timeout: float = Field(2.0, gt=0)

    @field_validator("kind")
    @classmethod
    def _client_installed(cls, kind: str) -> str:
        # Found, not imported: the client (and its pandas/pyarrow) loads only when a corpus uses it.
        if importlib.util.find_spec("pymilvus") is None:
            raise ValueError("the Milvus client is not installed: pip install 'llm-sidecar[rag]'")
        return kind


class RetrievalConfig(BaseModel):
    """The ``retrieval`` config section. No corpora (the default) means retrieval is off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: declared before ``corpora``: their check reads it
    extensions: tuple[str, ...] = (".txt", ".md")
    #: corpus name → directory whose text files are indexed (hidden entries such as a
    #: ConfigMap's ``..data`` are skipped; symlinks are followed), or a ``CorpusConfig``
    corpora: dict[str, CorpusConfig] = Field(default_factory=dict)
    vector_store: VectorStoreConfig | None = None
    chunk_size: int = Field(1000, ge=16)
    overlap: int = Field(100, ge=0)
    chunking: Literal["sentence", "fixed", "markdown"] = "sentence"
    #: seconds between checks of the corpus files for changes; 0 turns reloading off
    reload_interval: float = Field(10.0, ge=0)
    default_top_k: int = Field(5, ge=1)
    max_top_k: int = Field(50, ge=1)

    @field_validator("corpora", mode="before")
    @classmethod
    def _paths_are_corpora(cls, corpora: Any) -> Any:
        if isinstance(corpora, dict):
            return {name: {"path": c} if isinstance(c, (str, Path)) else c for name, c in corpora.items()}
        return corpora

    @field_validator("corpora")
    @classmethod
    def _corpora_have_files(cls, corpora: dict[str, CorpusConfig], info: ValidationInfo) -> dict[str, CorpusConfig]:
        # A typo in a path would otherwise serve an empty corpus without a word. A dense corpus
        # is searched in the vector store only: the sidecar need not have its files.
        extensions = info.data.get("extensions", (".txt", ".md"))
        problems = []
        for name, corpus in corpora.items():
            directory = corpus.path
            if not name:
                problems.append(problem((name,), "a corpus name must not be empty"))
            elif corpus.mode == "dense":
                continue
            elif not directory.is_dir():
                problems.append(problem((name,), f"{directory} is not a directory", str(directory)))
            elif not scan(directory, extensions):
                problems.append(problem((name,), f"no {' or '.join(extensions)} files in {directory}", str(directory)))
        if problems:
            raise invalid("corpora", problems)
        return corpora

    @model_validator(mode="after")
    def _dense_needs_a_store(self) -> RetrievalConfig:
        dense = [name for name, corpus in self.corpora.items() if corpus.mode != "bm25"]
        if dense and self.vector_store is None:
            raise ValueError(f"corpora {', '.join(dense)} search vectors: retrieval.vector_store must be set")
        return self

    @field_validator("overlap")
    @classmethod
    def _overlap_below_chunk_size(cls, overlap: int, info: ValidationInfo) -> int:
        chunk_size = info.data.get("chunk_size")
        if chunk_size is not None and overlap >= chunk_size:
            raise ValueError(f"must be less than chunk_size ({chunk_size})")
        return overlap

    @field_validator("max_top_k")
    @classmethod
    def _default_within_max(cls, max_top_k: int, info: ValidationInfo) -> int:
        default_top_k = info.data.get("default_top_k")
        if default_top_k is not None and default_top_k > max_top_k:
            raise ValueError(f"must be at least default_top_k ({default_top_k})")
        return max_top_k
