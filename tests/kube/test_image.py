"""Build the sidecar image with buildah and run it with podman (``make image``, about two minutes; needs root,
buildah, podman, debootstrap).

Besides serving, the image is measured: the bytes it keeps of its base image and the bytes its build
adds, and the time and CPU from the container's process start to its first ``/readyz`` 200 (printed;
run with ``-s`` to see them).
The injector image (``--target injector``) is built and run by ``make e2e``. Every podman and buildah call
names the project's image store (tests/kube/store.py), never the machine's default one.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube.cluster import base_image
from tests.kube.conftest import ROOT
from tests.kube.store import STORE, roots
from tests.waiting import wait_until

pytestmark = pytest.mark.image
#: this run's tag: another run of the suite (another checkout, other code) may build at the same time
IMAGE = f"localhost/llm-sidecar:test-{uuid.uuid4().hex[:8]}"
#: A container run as the pod runs it: the host's network (the pod's loopback), a read-only root with a
#: /tmp of its own, and the limits the tests' load needs
RUN = [
    "podman",
    *STORE,
    "run",
    "--rm",
    "--network",
    "host",
    "--read-only",
    "--tmpfs",
    "/tmp",
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=32768:32768",
]
MB = 1_000_000
#: The image is its own root (a FROM scratch stage): some of the base's files, kept as they are, and files
#: the build adds. Each is bounded, so the whole is too (87 MB on this machine's stand-in base, which keeps
#: the same Debian libraries and Python 3.11 standard library as python:3.11-slim: docs/kubernetes.md#images).
#: Bytes added: the venv without the Kubernetes client, stripped and compiled, and the standard library's
#: bytecode (37.1 MB when written; 38.5 MB when the image was the base plus layers). It catches the build
#: going wrong: the client (130 MB), pip and setuptools (25 MB) or unstripped extension modules (45 MB) back
#: in; a new dependency of a few MB fits (then update the docs).
MAX_ADDED = 45 * MB
#: Bytes kept of the base (38.5 MB of the stand-in's 199 MB when written): the interpreter, the standard
#: library, the shared libraries they and the venv load, /bin/sh, CA certificates. It catches what the image
#: stopped keeping coming back: pip and setuptools (14 MB here), the base's bytecode (5.9 MB here), perl,
#: coreutils, apt, locales (tens of MB), the whole base; a new library of a few MB fits.
MAX_KEPT = 42 * MB
#: CPU seconds from the sidecar's process start to ready: the start's own target (a start within
#: ``MAX_START`` on a free core cannot use more CPU than that). Measured quiet: 0.28-0.34 s on one machine
#: of this kind, 0.53-0.65 s in one run on another (an AMD EPYC, where every call costs ~3x the CPU). The two
#: regressions a tighter bound once stood for are asserted exactly, on any machine: bytecode compiled at
#: start (``test_image_holds_no_..._no_stale_bytecode``, 0.62 s when it happened) and modules loaded
#: that the config does not use (tests/test_imports.py).
MAX_START_CPU = 0.7
#: Seconds from the process start to ready, less the time its main thread waited for a core (0.39 s when
#: written, at load 3.8): the start on a node with a core free. The raw wall time depends on this shared
#: machine's load: printed, not asserted.
MAX_START = 0.7


def _missing() -> str | None:
    tools = [t for t in ("buildah", "podman", "debootstrap", "unshare") if not shutil.which(t)]
    if tools:
        return f"needs {', '.join(tools)} (apt-get install buildah podman debootstrap)"
    if os.geteuid() != 0:
        return "needs root (debootstrap, vfs storage, unshare -m)"
    return None


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def built(tag: str, tmp_path_factory: pytest.TempPathFactory, *args: str) -> Iterator[str]:
    """The Dockerfile built as ``tag`` (``args``: buildah's own, e.g. ``--build-arg EXTRAS=rag``); removed after."""
    if reason := _missing():
        pytest.skip(reason)
    subprocess.run([str(ROOT / "scripts" / "make-base-image.sh")], check=True, timeout=900)
    # Build from a staged context: exactly what .dockerignore lets through.
    ctx = tmp_path_factory.mktemp("context")
    shutil.copy(ROOT / "Dockerfile", ctx)
    shutil.copy(ROOT / "pyproject.toml", ctx)
    (ctx / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "image-rootfs.py", ctx / "scripts")
    shutil.copytree(ROOT / "proxy", ctx / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    readme = ROOT / "README.md"
    (ctx / "README.md").write_text(readme.read_text() if readme.exists() else "llm-sidecar\n")
    subprocess.run(
        [
            "buildah",
            *STORE,
            "bud",
            "--isolation",
            "chroot",
            "--pull=never",
            "-v",
            "/etc/ssl/certs:/etc/ssl/certs:ro",
            *args,
            "-t",
            tag,
            str(ctx),
        ],
        check=True,
        timeout=1200,
    )
    yield tag
    subprocess.run(["podman", *STORE, "rmi", "-f", tag], capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, default_store_unusable: Path) -> Iterator[str]:
    """Built, inspected, mounted and run with the default store unusable (see ``default_store_unusable``)."""
    yield from built(IMAGE, tmp_path_factory)


def _podman_script(script: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a bash script for podman in a private mount namespace (the cgroup v1/v2 hybrid mount off)."""
    script = "umount /sys/fs/cgroup/unified 2>/dev/null || true\n" + script
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_image_is_built_and_run_in_the_project_store_never_the_default_one(
    image: str, default_store_unusable: Path
) -> None:
    """Every test here runs with podman's and buildah's default store unusable (``default_store_unusable``).

    What breaks a user's run is the default store's state: after any plain ``podman`` on the machine, each
    ``--storage-driver vfs`` use of it fails. Touching the real default store from a test would be that
    hazard itself, so the tests replace it instead (``CONTAINERS_STORAGE_CONF``, a storage.conf whose roots
    cannot be created) and make-base-image.sh, the build, the inspections, the mounts and the runs in this
    module must all succeed anyway: each names the project's store (tests/kube/store.py). This test checks
    that the replacement holds (the commands these tests ran before they had a store of their own fail) and
    that the store the flags name is the documented one, holding the base image stand-in and the build.
    """
    before = subprocess.run(
        ["podman", "--storage-driver", "vfs", "image", "exists", base_image()], capture_output=True, text=True
    )
    assert before.returncode == 125 and "not a directory" in before.stderr, before
    out = subprocess.run(["podman", *STORE, "info", "--format", "json"], check=True, capture_output=True, text=True)
    store = json.loads(out.stdout)["store"]
    assert (store["graphRoot"], store["runRoot"], store["graphDriverName"]) == (*map(str, roots()), "vfs"), store
    for name in (base_image(), image):
        assert subprocess.run(["podman", *STORE, "image", "exists", name]).returncode == 0, name


def test_image_metadata(image: str) -> None:
    out = subprocess.run(["podman", *STORE, "image", "inspect", image], check=True, capture_output=True, text=True)
    config = json.loads(out.stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["llm-sidecar"]
    assert config.get("StopSignal") in ("SIGTERM", "15")
    # The image is its own root (FROM scratch): the base's PATH and LANG are declared again.
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["PATH"].split(":")[:1] == ["/opt/llm-sidecar/bin"] and "/usr/bin" in env["PATH"].split(":"), env
    assert env["LANG"] == "C.UTF-8" and env["PYTHONUNBUFFERED"] == "1", env


def _podman(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return _podman_script(shlex.join(["podman", *STORE, *args]), timeout=timeout)


def _size(name: str) -> int:
    out = subprocess.run(["podman", *STORE, "image", "inspect", "--format", "{{.Size}}", name], capture_output=True)
    return int(out.stdout)


def _files(name: str) -> dict[str, int]:
    """An image's regular files (path in the image → bytes), read from the image mounted (root only)."""
    mount = subprocess.run(["podman", *STORE, "image", "mount", name], check=True, capture_output=True, text=True)
    root = mount.stdout.strip()
    try:
        files = {}
        for folder, _, names in os.walk(root):
            for n in names:
                info = os.lstat(path := os.path.join(folder, n))
                if stat.S_ISREG(info.st_mode):
                    files[os.path.relpath(path, root)] = info.st_size
        return files
    finally:
        subprocess.run(["podman", *STORE, "image", "unmount", name], capture_output=True)


def test_image_size_kept_of_the_base_and_added(image: str) -> None:
    """The image is its own root: what it keeps of the base's files, and what the build adds to them."""
    base, ours = _files(base_image()), _files(image)
    kept = sum(size for path, size in ours.items() if base.get(path) == size)
    added = sum(ours.values()) - kept
    total = _size(image)
    print(
        f"\n[image] {total / MB:.1f} MB: {kept / MB:.1f} MB kept of the base ({_size(base_image()) / MB:.1f} MB) "
        f"+ {added / MB:.1f} MB added"
    )
    assert added <= MAX_ADDED, f"{added / MB:.1f} MB added to the base's files: see docs/kubernetes.md#images"
    assert kept <= MAX_KEPT, f"{kept / MB:.1f} MB kept of the base: see docs/kubernetes.md#images"


CHECKS = """
import importlib.util, json, os, shutil, ssl, sys
print(json.dumps({
    "kubernetes": importlib.util.find_spec("kubernetes") is not None,
    "pip in the venv": os.path.exists(os.path.join(sys.prefix, "bin", "pip")),
    "pip or setuptools": [m for m in ("pip", "setuptools", "ensurepip", "idlelib") if importlib.util.find_spec(m)],
    "build tools": [t for t in ("strip", "gcc", "cc", "make") if shutil.which(t)],
    "package manager": [t for t in ("apt-get", "dpkg", "perl") if shutil.which(t)],
    "shell": shutil.which("sh") is not None,
    "CA certificates": ssl.create_default_context().cert_store_stats()["x509_ca"] > 100,
}))
"""
WANTED = {
    "kubernetes": False,
    "pip in the venv": False,
    "pip or setuptools": [],
    "build tools": [],
    "package manager": [],
    "shell": True,
    "CA certificates": True,
}


def test_image_holds_no_kubernetes_client_no_build_tools_and_no_stale_bytecode(image: str) -> None:
    """The sidecar image's contents, and that `webhook` in it says which image to run instead."""
    script = (
        f"exec 2>&1; python3 -c '{CHECKS}'; "
        # -v: every module on the start path must load from its bytecode: "code object from <file>.py" is a
        # module compiled from source (the bytecode's own path is printed quoted). The image has no grep.
        "python3 -v -c 'import proxy.cli, proxy.server, proxy.cache.redis, uvloop' 2>&1; "
        "llm-sidecar webhook --tls-cert-file /nonexistent --tls-key-file /nonexistent; echo webhook exit $?"
    )
    res = _podman(
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=32768:32768",
        "--entrypoint",
        "sh",
        image,
        "-c",
        script,
    )
    lines = res.stdout.splitlines()
    assert json.loads(lines[0]) == WANTED, res
    compiled = [line for line in lines if re.match(r"# code object from [^']", line)]
    assert not compiled, compiled[:10]
    assert lines[-1] == "webhook exit 2", lines
    error = json.loads(next(line for line in lines if line.startswith("{") and '"error"' in line))
    assert error["msg"].startswith("cannot start: the Kubernetes client is not installed"), error
    assert "injector" in error["msg"] and "--no-kube" in error["msg"]


def _ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200
    except OSError:
        return False


#: Starts measured at most: the best one is asserted (see ``_start``).
STARTS = 3


def _start(run: list[str], name: str, config: Path, admin: int, image: str) -> tuple[float, float, float]:
    """Start the sidecar container ``name`` and wait for its /readyz: (CPU, wall, wall less waiting) seconds.

    CPU to ready: the process's user + system time, read when the first /readyz 200 is seen. Wall: from the
    kernel's start time of the container's process to that 200, less the time its main thread was ready
    to run but waited for a core (the kernel's schedstat), which is what other processes cost it.
    """
    sidecar = subprocess.Popen(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "bash",
            "-c",
            "umount /sys/fs/cgroup/unified 2>/dev/null || true\n"
            f"{shlex.join(run)} --name {name} -e MOCK_KEY=k -v {config}:/etc/llm-sidecar/sidecar.yaml:ro {image}",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _ready(admin) or sidecar.poll() not in (None, 0), timeout=180, interval=0.002)
        ready_at = time.clock_gettime(time.CLOCK_BOOTTIME)
        assert sidecar.wait(timeout=60) == 0 and _ready(admin), _podman("logs", name).stderr
    finally:
        if sidecar.poll() is None:
            sidecar.kill()
    pid = _podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    started_at, cpu = int(stat[19]) / ticks, (int(stat[11]) + int(stat[12])) / ticks
    waited = int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    wall = ready_at - started_at
    print(
        f"\n[image] start to ready {wall:.2f} s, {wall - waited:.2f} s of it not waiting for a core, "
        f"{cpu:.2f} s CPU (load average {os.getloadavg()[0]:.1f})"
    )
    return cpu, wall, wall - waited


def test_image_serves_health_and_a_proxied_completion(image: str, tmp_path: Path) -> None:
    """Run the mock provider and the sidecar from the image (host network, read-only root).

    The start is measured up to ``STARTS`` times, until one is within the budgets, and the best is
    asserted: what the image costs is the least a start took; a start that took more lost CPU to this
    shared machine (a busy sibling hyperthread or cache, which the kernel does not count as waiting).
    A build that recompiles bytecode at each start, or a heavy import added, costs every start.
    """
    mock, proxy, admin = _port(), _port(), _port()
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {proxy}, admin_host: 127.0.0.1, admin_port: {admin}}}\n"
        "model_groups:\n  gpt-4o-mini:\n    endpoints:\n"
        f"      - {{name: mock, url: 'http://127.0.0.1:{mock}/v1', dialect: openai, api_key_env: MOCK_KEY}}\n"
        "cache: {backend: memory}\n"
    )
    # Names of this run only: another run of the suite may have its own pair up at the same time.
    suffix = uuid.uuid4().hex[:8]
    mock_name, sidecar_name = f"llm-mock-{suffix}", f"llm-sc-{suffix}"
    run = [*RUN, "-d"]
    try:
        res = _podman_script(
            f"{shlex.join(run)} --name {mock_name} {image} mock-provider --host 127.0.0.1 --port {mock}", timeout=180
        )
        assert res.returncode == 0, res.stdout + res.stderr
        starts = []
        for attempt in range(STARTS):
            if attempt:
                _podman("rm", "-f", "-t", "3", sidecar_name, timeout=60)
                wait_until(lambda: not _ready(admin), timeout=60, what="the previous sidecar gone")
            starts.append(_start(run, sidecar_name, config, admin, image))
            if starts[-1][0] <= MAX_START_CPU and starts[-1][2] <= MAX_START:
                break
        cpu, wall = min(s[0] for s in starts), min(s[2] for s in starts)
        assert cpu <= MAX_START_CPU, f"{cpu:.2f} s of CPU to ready: see docs/kubernetes.md#images"
        assert wall <= MAX_START, f"{wall:.2f} s to ready: see docs/kubernetes.md#images"

        request = urllib.request.Request(
            f"http://127.0.0.1:{proxy}/v1/chat/completions",
            data=json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"content-type": "application/json", "authorization": "Bearer k"},
        )
        body = json.load(urllib.request.urlopen(request, timeout=30))
        assert body["choices"][0]["message"]["content"]
    finally:
        # Whatever happened above (a failed start, a timeout), neither container outlives the test.
        _podman_script(f"podman {shlex.join(STORE)} rm -f -i -t 3 {sidecar_name} {mock_name} >/dev/null", timeout=60)
