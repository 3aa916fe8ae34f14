"""Run what a rendered manifest runs, on this machine, without a cluster.

The pieces a kubelet would provide, stood in for as closely as a test can:

- a pod's network: a network namespace of its own (``unshare --net``, loopback up),
  so containers bind the ports the manifest names without clashing with anything;
  cluster DNS names resolve to that loopback through a private ``/etc/hosts``;
- a pod's volumes: the ConfigMap and Secret contents from the same rendering,
  written under a per-container root directory; paths in the container's args
  and in the mounted files are rewritten to point there (the only change made
  to what the manifest says);
- a pod's env: values, ``fieldRef``s, ``secretKeyRef``s and ``envFrom``.

Needs root (network and mount namespaces).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.waiting import wait_until

#: kind → path of keys from the object to its pod spec
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}


def needs_root() -> str | None:
    missing = [t for t in ("unshare", "nsenter", "ip") if not shutil.which(t)]
    if missing:
        return f"needs {', '.join(missing)}"
    return None if os.geteuid() == 0 else "needs root (network and mount namespaces)"


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]


def workloads(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(object, pod spec) for every object in ``docs`` that runs pods."""
    for doc in docs:
        path = POD_SPEC_PATHS.get(doc.get("kind", ""))
        if path is None:
            continue
        node: Any = doc
        for key in path:
            node = node[key]
        yield doc, node


def containers(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    return next((d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == name), None)


def secret_data(secret: Mapping[str, Any]) -> dict[str, bytes]:
    out = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    out.update({k: str(v).encode() for k, v in (secret.get("stringData") or {}).items()})
    return out


def port_of(container: Mapping[str, Any], port: int | str) -> int | None:
    """A port number, or the number of the container's port of that name (None if it has none)."""
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port), None)


class Pod:
    """One container of a rendered pod, laid out on this machine: its files, env and args."""

    def __init__(
        self,
        obj: Mapping[str, Any],
        spec: Mapping[str, Any],
        container: Mapping[str, Any],
        docs: list[dict[str, Any]],
        root: Path,
        secrets: Mapping[str, dict[str, bytes]] | None = None,
    ) -> None:
        self.obj, self.spec, self.container = obj, spec, container
        self.namespace = obj["metadata"].get("namespace", "default")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.mounts = sorted({m["mountPath"] for m in container.get("volumeMounts") or []}, key=len, reverse=True)
        self._pattern = (
            re.compile("|".join(rf"(?<![\w.-]){re.escape(m)}(?![\w.-])" for m in self.mounts)) if self.mounts else None
        )
        self._docs, self._secrets = docs, dict(secrets or {})
        self._write_volumes()

    def rewrite(self, text: str) -> str:
        """A path under a mount, as the process here must see it."""
        return self._pattern.sub(lambda m: str(self.root) + m.group(0), text) if self._pattern else text

    def secret(self, name: str) -> dict[str, bytes]:
        if name in self._secrets:
            return self._secrets[name]
        found = find(self._docs, "Secret", name)
        if found is None:
            raise LookupError(f"Secret {name} is neither rendered nor given to the test")
        return secret_data(found)

    def config_map(self, name: str) -> dict[str, bytes]:
        found = find(self._docs, "ConfigMap", name)
        if found is None:
            raise LookupError(f"ConfigMap {name} is not rendered")
        return {k: str(v).encode() for k, v in (found.get("data") or {}).items()}

    def _write_volumes(self) -> None:
        volumes = {v["name"]: v for v in self.spec.get("volumes") or []}
        for mount in self.container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"], {})  # not in the pod: a StatefulSet's claim, empty at first
            target = self.root / mount["mountPath"].lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                files, items = self.config_map(volume["configMap"]["name"]), volume["configMap"].get("items")
            elif "secret" in volume:
                files, items = self.secret(volume["secret"]["secretName"]), volume["secret"].get("items")
            else:  # emptyDir or a new claim: an empty directory
                continue
            if items:
                files = {i["path"]: files[i["key"]] for i in items}
            for key, content in files.items():
                (target / key).write_bytes(self.rewrite(content.decode()).encode())

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in self.container.get("envFrom") or []:
            if "secretRef" in source:
                env.update({k: v.decode() for k, v in self.secret(source["secretRef"]["name"]).items()})
            elif "configMapRef" in source:
                env.update({k: v.decode() for k, v in self.config_map(source["configMapRef"]["name"]).items()})
        fields = {"metadata.namespace": self.namespace, "metadata.name": self.obj["metadata"].get("name", "pod")}
        # A label the pod lacks gives an empty value, as the kubelet does.
        labels = self.obj["metadata"].get("labels") or {}
        fields.update({f"metadata.labels['{k}']": v for k, v in labels.items()})
        for var in self.container.get("env") or []:
            if "value" in var:
                env[var["name"]] = self.rewrite(str(var["value"]))
            elif ref := var.get("valueFrom", {}).get("fieldRef"):
                path = ref["fieldPath"]
                env[var["name"]] = fields[path] if not path.startswith("metadata.labels[") else fields.get(path, "")
            elif ref := var.get("valueFrom", {}).get("secretKeyRef"):
                env[var["name"]] = self.secret(ref["name"])[ref["key"]].decode()
        return env

    def port(self, port: int | str) -> int:
        found = port_of(self.container, port)
        assert found, f"{self.container['name']} has no port {port}"
        return found

    def argv(self, entrypoint: list[str]) -> list[str]:
        """The process the container runs: its command (or the image's entrypoint) and its args."""
        command = self.container.get("command") or entrypoint
        return [self.rewrite(a) for a in [*command, *(self.container.get("args") or [])]]


def make_ca(d: Path, names: list[str]) -> dict[str, Path]:
    """A test CA and a serving certificate for 127.0.0.1 and ``names`` (stands in for cert-manager)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    sans = ",".join(["IP:127.0.0.1", *(f"DNS:{n}" for n in names)])
    (d / "ext.cnf").write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n")
    run(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=serving",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
    )
    run(
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "tls.crt",
    )
    return {"ca": d / "ca.crt", "cert": d / "tls.crt", "key": d / "tls.key"}


class NetNS:
    """A network namespace (loopback up) with a private /etc/hosts; processes join it with nsenter."""

    def __init__(self, workdir: Path, hosts: list[str] = ()) -> None:
        hosts_file = workdir / "hosts"
        hosts_file.write_text("127.0.0.1 localhost " + " ".join(hosts) + "\n::1 localhost\n")
        ready = workdir / "netns-ready"
        ready.unlink(missing_ok=True)
        # The holder says when its namespaces are set up: until ``unshare`` has run, its pid is still
        # in this process's namespaces, and a process entering them then ran on the host (a check
        # such as "lo is up" passes there too). That was a Service relay or a server listening where
        # the test never looked, about one start in 200 under load.
        script = f"mount --bind {hosts_file} /etc/hosts && ip link set lo up && touch {ready} && exec sleep infinity"
        self.holder = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", script])
        self.enter = ["nsenter", "-t", str(self.holder.pid), "--net", "--mount"]
        wait_until(lambda: ready.exists() or self.holder.poll() is not None, 30, what="the namespace's holder set up")
        assert self.holder.poll() is None, "the network namespace's holder exited"
        own = os.stat("/proc/self/ns/net").st_ino
        assert os.stat(f"/proc/{self.holder.pid}/ns/net").st_ino != own, "the holder is not in a namespace of its own"
        self.processes: list[subprocess.Popen] = []

    def _enter(self, cwd: Path | str | None) -> list[str]:
        # Entering a mount namespace resets the working directory: nsenter sets it again.
        return [*self.enter, f"--wd={cwd or Path.cwd()}"]

    def run(self, argv: list[str], cwd: Path | str | None = None, **kwargs: Any) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run([*self._enter(cwd), *argv], **kwargs)

    def popen(self, argv: list[str], log: Path, cwd: Path | str | None = None, **kwargs: Any) -> subprocess.Popen:
        with open(log, "wb") as out:
            proc = subprocess.Popen([*self._enter(cwd), *argv], stdout=out, stderr=subprocess.STDOUT, **kwargs)
        self.processes.append(proc)
        return proc

    def forward(self, port: int, target: int, log: Path) -> None:
        """A Service's ``port`` reaching its pods' ``target`` port in this namespace (see :mod:`tests.kube.forward`)."""
        root = Path(__file__).resolve().parents[2]
        proc = self.popen([sys.executable, "-m", "tests.kube.forward", f"{port}:{target}"], log, cwd=root)

        def listening() -> bool:
            assert proc.poll() is None, f"the forwarder for {port} exited: {log.read_text(errors='replace')}"
            return f":{port} " in self.run(["ss", "-Hltn", f"sport = :{port}"]).stdout

        wait_until(listening, 30, interval=0.05, what=f"the forwarder for {port} is listening")

    def http(
        self,
        url: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        cafile: str | None = None,
        verify: bool = True,
        deadline: float = 180,
        any_status: bool = False,
        server: subprocess.Popen | None = None,
        log: Path | None = None,
    ) -> tuple[int, bytes]:
        """Call ``url`` from inside the namespace until it answers (status < 500, or any with ``any_status``).

        The deadline is generous: on a loaded machine the injector takes a minute to start. With the
        ``server`` that should answer, the wait ends when it exits, and a failure shows its exit code
        and ``log``.
        """
        res = self.run(
            [
                sys.executable,
                "-c",
                _HTTP,
                url,
                method,
                cafile or "",
                "1" if verify else "0",
                str(deadline),
                "1" if any_status else "0",
                str(server.pid) if server else "",
            ],
            input=body or b"",
            text=False,
            timeout=deadline + 30,
        )
        if res.returncode != 0:
            # What the namespace looked like, so that a failure explains itself.
            sockets = self.run(["ss", "-ltnp"]).stdout
            exited = f"\nthe server's exit code: {server.poll()}" if server else ""
            printed = f"\nthe server printed:\n{log.read_text(errors='replace')[-4000:]}" if log else ""
            raise AssertionError(
                f"{method} {url}: {res.stderr.decode(errors='replace')[-2000:]}\nlistening:\n{sockets}{exited}{printed}"
            )
        status, _, payload = res.stdout.partition(b"\n")
        return int(status), payload

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.holder.kill()
        self.holder.wait(10)


def stop(proc: subprocess.Popen, timeout: float = 20) -> int:
    """SIGTERM, as the kubelet stops a container; the exit code."""
    if proc.poll() is None:
        # nsenter execs the command (no fork without --pid): the signal reaches it directly.
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


# The HTTP client run inside the namespace: retries until the deadline, prints the status then the body.
_HTTP = r"""
import ssl, sys, time, urllib.error, urllib.request
url, method, cafile, verify, deadline, any_status, server = sys.argv[1:]


def exited(pid):  # a zombie until the test reaps it
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


body = sys.stdin.buffer.read() or None
ctx = ssl.create_default_context(cafile=cafile or None)
if verify == "0":
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
end, last = time.monotonic() + float(deadline), ""
while True:
    req = urllib.request.Request(url, body, {"content-type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(req, context=ctx if url.startswith("https") else None, timeout=5) as r:
            status, payload = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, payload = e.code, e.read()
    except (OSError, ssl.SSLError) as e:
        status, payload, last = 0, b"", repr(e)
    if status and (status < 500 or any_status == "1"):
        sys.stdout.buffer.write(b"%d\n" % status + payload)
        sys.exit(0)
    if server and exited(server):
        sys.exit(f"the server exited before {url} answered: status {status} {payload[:300]!r} {last}")
    if time.monotonic() > end:
        sys.exit(f"no answer from {url} by the deadline: status {status} {payload[:300]!r} {last}")
    time.sleep(0.2)
"""
