"""Pods from rendered manifests, run with podman on this machine: the end-to-end harness.

There is no API server or kubelet here (see the Kubernetes docs page, "What is
checked here"); this module stands in for the parts the tests need:

- **network**: one network namespace made by the harness (never podman's bridge);
  every container runs in it with ``--network host``, so pods share one loopback.
  Service names resolve there to 127.0.0.1 (``--add-host``, and a private
  ``/etc/hosts`` for the harness's own calls); a Service port that differs from
  its target port is a TCP relay in that namespace (:mod:`tests.kube.forward`). Pods that would
  bind the same ports (two injected sidecars) must run one after the other.
- **kubelet**: :meth:`Cluster.run_pod` starts a pod spec with ``podman run`` per
  container. Init containers run to completion in order; a native sidecar
  (init container with ``restartPolicy: Always``) is started and its startup
  probe awaited before the next container, as the kubelet does (``podman kube
  play`` cannot express this: it runs it as a classic init container and blocks).
  ``securityContext`` becomes ``--user``, ``--read-only``, ``--cap-drop``,
  ``no-new-privileges``; ConfigMap/Secret volumes become read-only bind mounts
  of their files, ``emptyDir`` a tmpfs; every container gets the service account
  token mount and ``KUBERNETES_SERVICE_*`` env. Not modelled: resource limits,
  liveness restarts, pod IPs.
- **API server**: :mod:`tests.kube.apiserver` on 127.0.0.1:6443, loaded with the
  rendered objects (for the injector's namespace sync).

podman runs with a private ``containers.conf`` and an overlay storage of its own
(the base image stand-in is copied in from the project's vfs store, :mod:`tests.kube.store`;
overlay makes a container in under a second where vfs copies the whole image), inside a
private mount namespace without the cgroup2 mount (see K8S-TOOLING). Everything the
harness creates is removed by :meth:`Cluster.close`. Needs root, podman, buildah.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.kube.pods import NetNS, Pod, containers
from tests.kube.store import STORE

ROOT = Path(__file__).resolve().parents[2]
API_PORT = 6443
PODMAN_STATE = [Path("/run/containers"), Path("/run/crun"), Path("/var/lib/containers/cache"), Path("/run/libpod")]


def missing_tools() -> str | None:
    tools = [t for t in ("podman", "buildah", "unshare", "nsenter", "redis-server", "openssl") if not shutil.which(t)]
    if tools:
        return f"needs {', '.join(tools)}"
    return None if os.geteuid() == 0 else "needs root"


class Timer:
    """Phase timings, printed as they end."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.phases: list[tuple[str, float]] = []
        self._last = self.start

    def phase(self, name: str) -> None:
        now = time.monotonic()
        self.phases.append((name, now - self._last))
        print(f"[e2e] {name}: {now - self._last:.1f} s", flush=True)
        self._last = now

    def report(self) -> str:
        total = time.monotonic() - self.start
        return "\n".join([*(f"  {n:<28} {s:6.1f} s" for n, s in self.phases), f"  {'total':<28} {total:6.1f} s"])


class Cluster:
    """One harness run: a network namespace, private podman state, and the pods started in it."""

    def __init__(self, hosts: Iterable[str] = (), store: Path | None = None) -> None:
        """``store``: a graphroot kept between runs (images built there are reused); default: a fresh one."""
        self.dir = Path(tempfile.mkdtemp(prefix="llm-e2e-"))
        os.chmod(self.dir, 0o755)
        self._state_before = {p for p in PODMAN_STATE if p.exists()}
        self.hosts = sorted(set(hosts))
        self.store = store or self.dir / "storage"
        # podman's database remembers its run and tmp paths: a kept store keeps them beside it.
        state = self.store.parent / f"{self.store.name}-state" if store else self.dir
        (self.dir / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\nrunroot = "{state}/run"\ngraphroot = "{self.store}"\n'
        )
        (state / "tmp").mkdir(parents=True, exist_ok=True)
        (self.dir / "containers.conf").write_text(
            '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            f'[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'events_logfile_path = "{state}/events.log"\ntmp_dir = "{state}/tmp"\n'
            f'volume_path = "{state}/volumes"\n'
        )
        self.env = {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": str(self.dir / "storage.conf"),
            "CONTAINERS_CONF": str(self.dir / "containers.conf"),
        }
        self.net = NetNS(self.dir, self.hosts)
        self.pods: list[RunningPod] = []
        self._redirects: set[tuple[int, int]] = set()
        self.api_ca: Path | None = None

    # --- podman and buildah ------------------------------------------------------------

    def podman(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """podman in a private mount namespace without the cgroup2 mount, joined to the harness's network."""
        script = 'umount /sys/fs/cgroup/unified 2>/dev/null || true; exec nsenter --net=/proc/$0/ns/net podman "$@"'
        res = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(self.net.holder.pid), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args[:3])}: {res.stderr[-3000:]}")
        return res

    def build(self, tag: str, context: Path, dockerfile: str = "Dockerfile", target: str | None = None) -> None:
        """buildah bud into the private store; the registry is reached through the host's CA bundle.

        ``target``: a stage of the Dockerfile. Its layers are kept, so a second target of the same
        Dockerfile reuses the stages they share.
        """
        # A kept store reuses an image built from the same context (every file's bytes hashed).
        digest = hashlib.sha256(f"target={target}".encode())
        for path in sorted(p for p in context.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(context)).encode() + b"\0" + path.read_bytes())
        label = f"llm-sidecar.e2e.context={digest.hexdigest()}"
        found = self.podman(
            "image", "inspect", "--format", '{{index .Labels "llm-sidecar.e2e.context"}}', tag, check=False
        ).stdout.strip()
        if found == digest.hexdigest():
            return
        # Overlay mounts stay in a private mount namespace.
        subprocess.run(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "buildah",
                "bud",
                "--isolation",
                "chroot",
                "--pull=never",
                "--layers",
                *(["--target", target] if target else []),
                "-f",
                str(context / dockerfile),
                "-v",
                "/etc/ssl/certs:/etc/ssl/certs:ro",
                "--label",
                label,
                "-t",
                tag,
                str(context),
            ],
            env=self.env,
            check=True,
            timeout=1800,
            stdout=subprocess.DEVNULL,
        )

    def load_base_image(self, name: str) -> None:
        """Copy an image from the project's (vfs) store, where the base image stand-in lives, into this one."""
        if self.podman("image", "exists", name, check=False).returncode == 0:
            return
        # On a fresh machine `make e2e` may run before anything made the stand-in (it is kept once made).
        subprocess.run([str(ROOT / "scripts" / "make-base-image.sh"), name], check=True, timeout=900)
        script = (
            "umount /sys/fs/cgroup/unified 2>/dev/null || true; set -o pipefail; "
            f'podman {shlex.join(STORE)} save "$0" | podman load'
        )
        subprocess.run(
            ["unshare", "-m", "--propagation", "private", "bash", "-c", script, name],
            env=self.env,
            check=True,
            timeout=600,
            stdout=subprocess.DEVNULL,
        )

    def build_project_image(self, tag: str, target: str | None = None) -> None:
        """The Dockerfile (its default target, or ``target``), built from the files a clean checkout has."""
        ctx = self.dir / "context"
        if ctx.exists():
            shutil.rmtree(ctx)
        ctx.mkdir()
        shutil.copy(ROOT / "Dockerfile", ctx)
        shutil.copy(ROOT / "pyproject.toml", ctx)
        (ctx / "scripts").mkdir()
        shutil.copy(ROOT / "scripts" / "image-rootfs.py", ctx / "scripts")
        shutil.copy(ROOT / "README.md", ctx)
        shutil.copytree(ROOT / "proxy", ctx / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
        self.load_base_image(base_image())
        self.build(tag, ctx, target=target)

    # --- the network: services, host processes --------------------------------------

    def service_port(self, port: int, target: int) -> None:
        """A Service's port mapped to its pods' target port (kube-proxy's part)."""
        if port != target and (port, target) not in self._redirects:
            self.net.forward(port, target, self.dir / f"forward-{port}.log")
            self._redirects.add((port, target))

    def start_process(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        """A process of this machine in the harness's network (the API stand-in, redis-server)."""
        return self.net.popen(argv, self.dir / f"{name}.log", **kwargs)

    def start_apiserver(self, objects: list[dict[str, Any]], tls: Mapping[str, Path]) -> None:
        path = self.dir / "api-objects.yaml"
        path.write_text(yaml.safe_dump_all(objects))
        self.api_ca = tls["ca"]
        self.start_process(
            "apiserver",
            [
                sys.executable,
                "-m",
                "tests.kube.apiserver",
                "--port",
                str(API_PORT),
                "--cert",
                str(tls["cert"]),
                "--key",
                str(tls["key"]),
                "--objects",
                str(path),
            ],
            cwd=ROOT,
        )
        self.net.http(f"https://127.0.0.1:{API_PORT}/version", cafile=str(tls["ca"]))

    def api_get(self, path: str) -> dict[str, Any]:
        status, body = self.net.http(f"https://127.0.0.1:{API_PORT}{path}", cafile=str(self.api_ca))
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    # --- pods -----------------------------------------------------------------------------

    def run_pod(
        self,
        name: str,
        obj: Mapping[str, Any],
        spec: Mapping[str, Any],
        docs: list[dict[str, Any]],
        images: Mapping[str, str] | None = None,
        entrypoints: Mapping[str, list[str]] | None = None,
        secrets: Mapping[str, dict[str, bytes]] | None = None,
        probe_deadline: float = 180,
    ) -> RunningPod:
        """Start a pod spec as the kubelet would (see the module doc); returns once its containers started.

        ``docs`` holds the ConfigMaps and Secrets its volumes and env name; ``images`` maps an image the
        spec names to one in the private store; ``entrypoints`` gives the entrypoint of images whose
        containers name no command, when it is not the image's own (a stand-in image).
        """
        pod = RunningPod(self, name, obj, spec, docs, dict(images or {}), dict(entrypoints or {}), secrets)
        self.pods.append(pod)
        for c in spec.get("initContainers") or []:
            pod.start(c)
            if c.get("restartPolicy") == "Always":
                pod.await_probe(c, "startupProbe", probe_deadline)
            else:
                assert pod.wait(c["name"], probe_deadline) == 0, pod.logs(c["name"])
        for c in spec.get("containers") or []:
            pod.start(c)
        return pod

    def close(self) -> None:
        # Every container of this run in one call.
        self.podman("rm", "-af", "-t", "0", check=False, timeout=600)
        self.net.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        # What podman and crun made outside the private state; only if nothing else uses it now.
        for path in PODMAN_STATE:
            if path not in self._state_before and path.is_dir():
                for sub in sorted(path.rglob("*"), reverse=True):
                    if sub.is_dir() and not any(sub.iterdir()):
                        sub.rmdir()
                if not any(path.iterdir()):
                    path.rmdir()


class RunningPod:
    """The containers of one pod started by :meth:`Cluster.run_pod`."""

    def __init__(
        self,
        cluster: Cluster,
        name: str,
        obj: Mapping[str, Any],
        spec: Mapping[str, Any],
        docs: list[dict[str, Any]],
        images: dict[str, str],
        entrypoints: dict[str, list[str]],
        secrets: Mapping[str, dict[str, bytes]] | None,
    ) -> None:
        self.cluster, self.name, self.obj, self.spec = cluster, name, obj, spec
        self.docs, self.images, self.entrypoints, self.secrets = docs, images, entrypoints, secrets
        self.root = cluster.dir / "pods" / name
        self.started: list[str] = []
        self.sidecars: list[str] = []
        self.layouts: dict[str, Pod] = {}

    def container_name(self, container: str) -> str:
        return f"{self.name}-{container}"

    def start(self, c: Mapping[str, Any]) -> None:
        layout = Pod(self.obj, self.spec, c, self.docs, self.root / c["name"], self.secrets)
        self.layouts[c["name"]] = layout
        pod_sc = self.spec.get("securityContext") or {}
        sc = {**pod_sc, **(c.get("securityContext") or {})}
        args = [
            "run",
            "-d",
            "--name",
            self.container_name(c["name"]),
            "--network",
            "host",
            *(f"--add-host={h}:127.0.0.1" for h in self.cluster.hosts),
        ]
        if "runAsUser" in sc:
            args.append(f"--user={sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}")
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if "ALL" in (sc.get("capabilities") or {}).get("drop", []):
            args.append("--cap-drop=all")
        if sc.get("allowPrivilegeEscalation") is False:
            args.append("--security-opt=no-new-privileges")
        volumes = {v["name"]: v for v in self.spec.get("volumes") or []}
        for m in c.get("volumeMounts") or []:
            if "emptyDir" in volumes.get(m["name"], {}):
                args.append(f"--tmpfs={m['mountPath']}:rw,mode=1777")
            else:
                args.append(
                    f"--volume={layout.root}{m['mountPath']}:{m['mountPath']}:ro"
                    if m.get("readOnly")
                    else f"--volume={layout.root}{m['mountPath']}:{m['mountPath']}"
                )
        sa = self.root / "serviceaccount"
        if not sa.exists():
            sa.mkdir(parents=True)
            (sa / "token").write_text("test-token")
            (sa / "namespace").write_text(layout.namespace)
            if self.cluster.api_ca:
                shutil.copy(self.cluster.api_ca, sa / "ca.crt")
        args.append(f"--volume={sa}:/var/run/secrets/kubernetes.io/serviceaccount:ro")
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(API_PORT), **layout.env()}
        args += [f"--env={k}={v}" for k, v in env.items()]
        image = self.images.get(c["image"], c["image"])
        command = c.get("command") or self.entrypoints.get(c["image"])
        if command:
            args.append(f"--entrypoint={json.dumps(command)}")
        self.cluster.podman(*args, image, *(c.get("args") or []))
        self.started.append(c["name"])
        if c.get("restartPolicy") == "Always":
            self.sidecars.append(c["name"])

    def await_probe(self, c: Mapping[str, Any], kind: str, deadline: float = 180) -> None:
        """Wait until the container's probe of that kind passes (the kubelet's view of it)."""
        probe = c.get(kind) or c.get("readinessProbe")
        if not probe or "httpGet" not in probe:
            return
        get = probe["httpGet"]
        port = self.layouts[c["name"]].port(get["port"])
        url = f"{get.get('scheme', 'HTTP').lower()}://127.0.0.1:{port}{get['path']}"
        end = time.monotonic() + deadline
        while True:  # in short rounds, so that a container that exited fails at once
            try:
                status, body = self.cluster.net.http(url, verify=False, deadline=5)
                break
            except AssertionError as exc:
                state = self.cluster.podman(
                    "inspect", "--format", "{{.State.Status}}", self.container_name(c["name"]), check=False
                ).stdout.strip()
                if state != "running" or time.monotonic() > end:
                    raise AssertionError(f"{self.name}/{c['name']} is {state}: {exc}\n{self.logs(c['name'])}") from None
        assert status == 200, f"{self.name}/{c['name']} {kind}: {status} {body[:300]!r}\n{self.logs(c['name'])}"

    def exec(self, container: str, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a command in a container, with the container's env and user (``kubectl exec``)."""
        return self.cluster.podman("exec", self.container_name(container), *argv, check=False, timeout=timeout)

    def logs(self, container: str) -> str:
        res = self.cluster.podman("logs", self.container_name(container), check=False)
        return (res.stdout + res.stderr)[-4000:]

    def wait(self, container: str, timeout: float = 120) -> int:
        """The container's exit code once it has exited."""
        res = self.cluster.podman("wait", self.container_name(container), timeout=timeout)
        return int(res.stdout.strip().splitlines()[-1])

    def stop(self, container: str, grace: int | None = None) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds (default: the pod's terminationGracePeriodSeconds)."""
        grace = self.spec.get("terminationGracePeriodSeconds", 30) if grace is None else grace
        self.cluster.podman("stop", "-t", str(grace), self.container_name(container), timeout=grace + 60)
        return self.wait(container)

    def app_containers(self) -> list[str]:
        return [c["name"] for c in self.spec.get("containers") or []]

    def terminate(self, app_grace: int | None = None) -> dict[str, int]:
        """Stop the pod as the kubelet does: app containers first, then sidecars in reverse order."""
        codes = {}
        for name in self.app_containers():
            codes[name] = self.stop(name, app_grace)
        for name in reversed(self.sidecars):
            codes[name] = self.stop(name)
        return codes

    def complete(self, timeout: float = 180) -> dict[str, int]:
        """A run-to-completion pod: wait for the app containers to exit, then the kubelet stops the sidecars."""
        codes = {name: self.wait(name, timeout) for name in self.app_containers()}
        for name in reversed(self.sidecars):
            codes[name] = self.stop(name)
        return codes

    def remove(self) -> None:
        for name in self.started:
            self.cluster.podman("rm", "-f", "-t", "0", self.container_name(name), check=False)


def base_image() -> str:
    """The Dockerfile's base image (its ``PYTHON_IMAGE`` argument)."""
    found = re.search(r"^ARG PYTHON_IMAGE=(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert found, "the Dockerfile names its base image in ARG PYTHON_IMAGE"
    return found.group(1)


def pod_of(docs: list[dict[str, Any]], kind: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(object, pod spec) of a rendered workload."""
    from tests.kube.pods import workloads

    return next((o, s) for o, s in workloads(docs) if o["kind"] == kind and o["metadata"]["name"] == name)


__all__ = ["Cluster", "RunningPod", "Timer", "base_image", "containers", "pod_of", "missing_tools"]
