"""Fixtures for the Kubernetes tests: a real helm binary, a test CA, a TLS webhook on loopback."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube.pods import make_ca

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "llm-sidecar"
GOLDEN = Path(__file__).parent / "golden"
KUBE_VERSIONS = ("1.29.0", "1.33.0")


@pytest.fixture(scope="session")
def helm() -> str:
    """A helm 3 binary: from PATH if it is helm 3, else fetched once into .tools/bin."""
    found = shutil.which("helm")
    if found and subprocess.run([found, "version", "--short"], capture_output=True, text=True).stdout.startswith("v3."):
        return found
    local = ROOT / ".tools" / "bin" / "helm"
    if not local.exists():
        subprocess.run([str(ROOT / "scripts" / "get-helm.sh")], check=True, capture_output=True, timeout=300)
    return str(local)


@pytest.fixture(scope="module")
def default_store_unusable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """podman's and buildah's default store made unusable for the module: a podman or buildah call that
    does not name the project's own store (tests/kube/store.py) fails, whatever state the machine's
    default store is in.

    A user hits the breakage this guards against when any plain ``podman`` has run on the machine: the
    default store then records the overlay driver, and every ``--storage-driver vfs`` use of it fails.
    Running a plain podman here would itself be that hazard (the default store is shared), so the
    default store is replaced instead, for this module's processes only: ``CONTAINERS_STORAGE_CONF``
    names a storage.conf whose graph root and run root lie under a regular file, where nothing can
    be created. Yields that storage.conf.
    """
    d = tmp_path_factory.mktemp("default-store")
    (d / "a-file").write_text("not a directory: the default store is not for the project's tests\n")
    conf = d / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{d}/a-file/storage"\nrunroot = "{d}/a-file/run"\n')
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CONTAINERS_STORAGE_CONF", str(conf))
        yield conf


@pytest.fixture(scope="session")
def kubernetes_validate() -> str:
    exe = Path(__import__("sys").executable).with_name("kubernetes-validate")
    if not exe.exists():
        pytest.skip("kubernetes-validate is not installed in the venv")
    return str(exe)


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a serving certificate for 127.0.0.1, made with the openssl CLI."""
    if not shutil.which("openssl"):
        pytest.skip("openssl CLI not available")
    d = tmp_path_factory.mktemp("tls")
    return {**make_ca(d, ["localhost"]), "dir": d}


#: Minutes of image builds, each run only when its marker is selected: marker → why skipped otherwise.
ON_REQUEST = {
    "image": "the sidecar image (its own build): run it with `make image`",
    "e2e": "end to end: run it with `make e2e`",
    "rag_image": "the image with the rag extra (its own build): run it with `make rag-image`",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The image (``make image``, ``-m image``), the end-to-end run (``make e2e``) and the rag image
    (``make rag-image``) only when asked for."""
    # the marker expression's names, as words: ``rag_image`` does not ask for ``image``
    selected = set(re.findall(r"\w+", config.getoption("markexpr") or ""))
    for marker, reason in ON_REQUEST.items():
        if marker in selected:
            continue
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="module")
def kube_e2e(helm: str, default_store_unusable: Path) -> Iterator[Any]:
    """The end-to-end cluster side (images, API stand-in, injector, mock provider, Redis): tests/kube/e2e.py."""
    from tests.kube.cluster import Timer, missing_tools
    from tests.kube.e2e import stage

    if reason := missing_tools():
        pytest.skip(reason)
    timer = Timer()
    try:
        with stage(helm, timer) as ready:
            yield ready
    finally:
        print("\n[e2e] timings:\n" + timer.report(), flush=True)
