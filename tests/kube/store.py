"""The project's own image store: where the image tests build and run, and where the base image stand-in lives.

podman's and buildah's default store (/var/lib/containers/storage) belongs to anything else on the machine
that runs them: once a plain ``podman`` has run there, it records the overlay driver and every later
``--storage-driver vfs`` use of it fails (``database storage graph driver ... does not match``). So every
podman and buildah call of the tests names this store instead (vfs: no mounts needed), and the store is
kept between runs (the stand-in is made once, with debootstrap, by scripts/make-base-image.sh).

- default: graph root ``/var/lib/llm-sidecar/containers``, run root ``/run/llm-sidecar/containers``;
- ``LLM_SIDECAR_IMAGE_STORE=DIR``: graph root ``DIR/storage``, run root ``DIR/run``.

scripts/make-base-image.sh holds the same definition, for the shell.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "LLM_SIDECAR_IMAGE_STORE"


def roots() -> tuple[Path, Path]:
    """(graph root, run root) of the store."""
    if base := os.environ.get(ENV):
        return Path(base) / "storage", Path(base) / "run"
    return Path("/var/lib/llm-sidecar/containers"), Path("/run/llm-sidecar/containers")


#: podman's and buildah's global options naming the store: each of their calls starts with these
STORE = ["--root", str(roots()[0]), "--runroot", str(roots()[1]), "--storage-driver", "vfs"]
