"""The image built with the ``rag`` extra (``--build-arg EXTRAS=rag``): what the chart's index Job and the sidecars
of dense and hybrid corpora run (docs/retrieval.md#in-kubernetes). Built and run as tests/kube/test_image.py builds
and runs the default image; ``make rag-image`` runs it (its own build, about two minutes: not in ``make test``).

No Milvus runs here: the store is a port nothing listens on, so each command gets as far as the connection and fails
the documented way. What this checks is the image itself: that pymilvus's client (pandas, numpy and its OpenBLAS,
grpcio) and the sidecar's own gRPC search load in an image that keeps of its base only what scripts/image-rootfs.py
lists, and that nothing they run needs what it leaves out.
"""

from __future__ import annotations

import json
import shlex
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.kube.store import STORE
from tests.kube.test_image import MB, RUN, _files, _podman_script, _port, _ready, _size, built
from tests.servers import MockProvider, RefusedPort
from tests.waiting import wait_until

pytestmark = pytest.mark.rag_image
RAG_IMAGE = f"localhost/llm-sidecar:test-rag-{uuid.uuid4().hex[:8]}"
#: What `llm-sidecar index` imports (the whole pymilvus client: pandas, numpy, grpcio, protobuf) and what the
#: sidecar's dense search loads (gRPC and pymilvus's generated messages alone), then numpy's and pandas's compiled
#: code run once (a matrix product goes through numpy's vendored OpenBLAS).
IMPORTS = """
import json, sys
import numpy, pandas, pymilvus
import proxy.cli, proxy.rag.indexer, proxy.rag.milvus_admin, proxy.server
from proxy.rag.milvus import _messages
stub = _messages().milvus_pb2_grpc.MilvusServiceStub
product = (numpy.ones((64, 64)) @ numpy.ones((64, 64)))[0, 0]
total = int(pandas.DataFrame({"a": numpy.arange(4)})["a"].sum())
print(json.dumps({"pymilvus": pymilvus.__version__, "product": float(product), "sum": total, "stub": stub.__name__}))
"""


@pytest.fixture(scope="module")
def rag_image(tmp_path_factory: pytest.TempPathFactory, default_store_unusable: Path) -> Iterator[str]:
    yield from built(RAG_IMAGE, tmp_path_factory, "--build-arg", "EXTRAS=rag")


def _config(path: Path, mock: MockProvider, store: RefusedPort, proxy: int = 15180, admin: int = 15190) -> Path:
    """A dense corpus in a Milvus at ``store``, embedded by the mock provider; a chat group beside it."""
    endpoint = {"name": "mock", "url": mock.url + "/v1", "api_key": "k"}
    path.write_text(
        json.dumps(
            {
                "server": {"host": "127.0.0.1", "port": proxy, "admin_host": "127.0.0.1", "admin_port": admin},
                "model_groups": {
                    "embed": {"endpoints": [{**endpoint, "model": "text-embedding-3-small"}]},
                    "gpt-4o-mini": {"endpoints": [endpoint]},
                },
                "cache": {"backend": "memory"},
                "retrieval": {
                    "vector_store": {"uri": store.url, "timeout": 5},
                    "corpora": {"kb": {"path": "/srv/corpus", "mode": "dense", "embeddings": {"model_group": "embed"}}},
                },
            }
        )
    )
    return path


def _corpus(directory: Path) -> Path:
    directory.mkdir()
    (directory / "redis.md").write_text("# Redis\n\nThe shared cache lives in Redis; every sidecar reads it.\n")
    return directory


def test_rag_image_imports_the_milvus_client_and_index_fails_only_on_the_unreachable_store(
    rag_image: str, tmp_path: Path, mock_provider: MockProvider, refused_port: RefusedPort
) -> None:
    config, corpus = _config(tmp_path / "sidecar.json", mock_provider, refused_port), _corpus(tmp_path / "corpus")
    script = (
        "exec 2>&1; llm-sidecar index --help; echo help exit $?; "
        f"python3 -c {shlex.quote(IMPORTS)}; echo imports exit $?; "
        "llm-sidecar index --config /etc/llm-sidecar/sidecar.yaml; echo index exit $?"
    )
    mounts = ["-v", f"{config}:/etc/llm-sidecar/sidecar.yaml:ro", "-v", f"{corpus}:/srv/corpus:ro"]
    res = _podman_script(shlex.join([*RUN, *mounts, "--entrypoint", "sh", rag_image, "-c", script]), timeout=300)
    out = res.stdout
    lines = out.splitlines()
    assert "help exit 0" in lines and "usage: llm-sidecar index" in out, out
    assert "imports exit 0" in lines, out
    loaded = json.loads(lines[lines.index("imports exit 0") - 1])
    assert loaded["product"] == 64.0 and loaded["sum"] == 6 and loaded["stub"] == "MilvusServiceStub", loaded
    # The index command gets as far as the store and says so (exit 1), instead of failing to load.
    assert lines[-1] == "index exit 1", out
    # (pymilvus words the rest: "Fail connecting to server on 127.0.0.1:PORT, ... server unavailable")
    failed = [line for line in lines if line.startswith("kb: failed: vector store listing failed: ")]
    assert len(failed) == 1 and f"127.0.0.1:{refused_port.port}" in failed[0], out

    # The size, and where it goes (printed, not asserted: docs/retrieval.md#in-kubernetes quotes it).
    files, packages = _files(rag_image), Counter[str]()
    for path, size in files.items():
        if (parts := path.split("/site-packages/", 1)[1:]) and "/" in parts[0]:
            packages[parts[0].split("/")[0]] += size
    top = ", ".join(f"{name} {size / MB:.1f}" for name, size in packages.most_common(6))
    print(
        f"\n[rag image] {_size(rag_image) / MB:.1f} MB ({sum(files.values()) / MB:.1f} MB of files), "
        f"pymilvus {loaded['pymilvus']}; site-packages {sum(packages.values()) / MB:.1f} MB: {top} MB"
    )


def test_rag_image_serves_a_dense_corpus_and_answers_503_while_its_store_is_down(
    rag_image: str, tmp_path: Path, mock_provider: MockProvider, refused_port: RefusedPort
) -> None:
    """The sidecar as the image runs it (its ENTRYPOINT and CMD): ready without the store, which it dials on first
    use; a query of the dense corpus is the documented 503, and other calls are served."""
    proxy, admin = _port(), _port()
    config = _config(tmp_path / "sidecar.json", mock_provider, refused_port, proxy, admin)
    name = f"llm-sc-rag-{uuid.uuid4().hex[:8]}"
    run = [*RUN, "-d", "--name", name, "-v", f"{config}:/etc/llm-sidecar/sidecar.yaml:ro", rag_image]
    try:
        res = _podman_script(shlex.join(run), timeout=180)
        assert res.returncode == 0, res.stdout + res.stderr

        def up() -> bool:
            if _ready(admin):
                return True
            alive = _podman_script(shlex.join(["podman", *STORE, "container", "exists", name]), timeout=60)
            assert alive.returncode == 0, "the sidecar exited: its log is above"
            return False

        try:
            wait_until(up, timeout=180, interval=0.05)
        finally:
            print(_podman_script(shlex.join(["podman", *STORE, "logs", name]), timeout=60).stdout[-3000:])
        refused = httpx.post(f"http://127.0.0.1:{proxy}/v1/retrieve", json={"corpus": "kb", "query": "Redis"})
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["message"].startswith("vector store search failed: UNAVAILABLE"), error
        chat = httpx.post(
            f"http://127.0.0.1:{proxy}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": "Bearer k"},
            timeout=30,
        )
        assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"], chat.text
    finally:
        _podman_script(f"podman {shlex.join(STORE)} rm -f -i -t 3 {name} >/dev/null", timeout=60)
