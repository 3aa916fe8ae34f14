"""The ``retrieval`` config section and the per-model-group ``context`` switch.

Kept apart from ``service.py`` so that loading a config does not load the
retrieval machinery: a sidecar without corpora never imports it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

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


class RetrievalConfig(BaseModel):
    """The ``retrieval`` config section. No corpora (the default) means retrieval is off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: declared before ``corpora``: their check reads it
    extensions: tuple[str, ...] = (".txt", ".md")
    #: corpus name → directory whose text files are indexed (hidden entries such as a
    #: ConfigMap's ``..data`` are skipped; symlinks are followed)
    corpora: dict[str, Path] = Field(default_factory=dict)
    chunk_size: int = Field(1000, ge=16)
    overlap: int = Field(100, ge=0)
    chunking: Literal["sentence", "fixed"] = "sentence"
    #: seconds between checks of the corpus files for changes; 0 turns reloading off
    reload_interval: float = Field(10.0, ge=0)
    default_top_k: int = Field(5, ge=1)
    max_top_k: int = Field(50, ge=1)

    @field_validator("corpora")
    @classmethod
    def _corpora_have_files(cls, corpora: dict[str, Path], info: ValidationInfo) -> dict[str, Path]:
        # A typo in a path would otherwise serve an empty corpus without a word.
        extensions = info.data.get("extensions", (".txt", ".md"))
        problems = []
        for name, directory in corpora.items():
            if not name:
                problems.append(problem((name,), "a corpus name must not be empty"))
            elif not directory.is_dir():
                problems.append(problem((name,), f"{directory} is not a directory", str(directory)))
            elif not scan(directory, extensions):
                problems.append(problem((name,), f"no {' or '.join(extensions)} files in {directory}", str(directory)))
        if problems:
            raise invalid("corpora", problems)
        return corpora

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
