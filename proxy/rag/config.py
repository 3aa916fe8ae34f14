"""The ``retrieval`` config section and the per-model-group ``context`` switch.

Kept apart from ``service.py`` so that loading a config does not load the
retrieval machinery: a sidecar without corpora never imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ContextInjection(BaseModel):
    """Per model group: retrieve from ``corpus`` with the last user message and add ``top_k`` passages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    corpus: str
    top_k: int = Field(3, ge=1, le=50)
    #: passages scoring below this are not added (None: any positive score)
    min_score: float | None = None


class RetrievalConfig(BaseModel):
    """The ``retrieval`` config section. No corpora (the default) means retrieval is off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: corpus name → directory whose text files are indexed (hidden entries such as a
    #: ConfigMap's ``..data`` are skipped; symlinks are followed)
    corpora: dict[str, Path] = Field(default_factory=dict)
    extensions: tuple[str, ...] = (".txt", ".md")
    chunk_size: int = Field(1000, ge=16)
    overlap: int = Field(100, ge=0)
    chunking: Literal["sentence", "fixed"] = "sentence"
    #: seconds between checks of the corpus files for changes; 0 turns reloading off
    reload_interval: float = Field(10.0, ge=0)
    default_top_k: int = Field(5, ge=1)
    max_top_k: int = Field(50, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> RetrievalConfig:
        if self.overlap >= self.chunk_size:
            raise ValueError(f"retrieval.overlap ({self.overlap}) must be less than chunk_size ({self.chunk_size})")
        if self.default_top_k > self.max_top_k:
            raise ValueError("retrieval.default_top_k must not exceed max_top_k")
        for name in self.corpora:
            if not name:
                raise ValueError("retrieval.corpora: a corpus name must not be empty")
        return self
