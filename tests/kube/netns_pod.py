"""Run an injected sidecar and an app the way a pod runs them: one network namespace.

``python -m tests.kube.netns_pod SPEC.json`` is started under ``unshare --net`` (a fresh
network namespace with only loopback, like a pod's), and in it:

1. starts the mock provider (the upstream) on ``spec["mock_port"]``;
2. starts the sidecar as its container spec says (``spec["sidecar_argv"]``, ``spec["env"]``)
   and polls its startup probe as the kubelet does, until it answers 200 (a native
   sidecar's app containers start only then);
3. starts the "app": listens on ``spec["app_ports"]`` (undeclared, as apps do) on 0.0.0.0;
4. makes ``spec["calls"]`` (``[url, body]``) to the proxy, as the app's SDK would;
5. with ``spec["term_calls"]``: sends SIGTERM to the sidecar, as the kubelet stops a pod's
   plain containers together, waits for readiness to fail, makes those calls (the app's own
   shutdown), and times the sidecar's exit.

It prints one JSON object: the probe status, which app ports could be bound, each call's
status and body, and the sidecar's exit code if it died.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def get(url: str, body: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, body, {"content-type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(url: str, deadline: float, process: subprocess.Popen[bytes]) -> int | None:
    while time.monotonic() < deadline and process.poll() is None:
        try:
            status, _ = get(url)
            if status == 200:
                return status
        except OSError:
            pass
        time.sleep(0.1)
    return None


def main(spec_path: str) -> int:
    spec = json.loads(open(spec_path, encoding="utf-8").read())
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    result: dict = {}
    exe = spec["exe"]
    mock = subprocess.Popen(
        [exe, "mock-provider", "--port", str(spec["mock_port"])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    sidecar = subprocess.Popen(
        [exe, *spec["sidecar_argv"]], env=spec["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    app: list[socket.socket] = []
    try:
        deadline = time.monotonic() + spec.get("timeout", 60)
        wait_for(f"http://127.0.0.1:{spec['mock_port']}/v1/models", deadline, mock)
        result["startup_probe"] = wait_for(spec["probe_url"], deadline, sidecar)
        result["app_ports"] = {}
        for port in spec["app_ports"]:
            sock = socket.socket()
            try:
                sock.bind(("0.0.0.0", port))
                sock.listen()
                result["app_ports"][str(port)] = "listening"
                app.append(sock)
            except OSError as exc:
                result["app_ports"][str(port)] = exc.strerror
                sock.close()
        result["calls"] = []
        for url, body in spec.get("calls", []):
            try:
                status, text = get(url, json.dumps(body).encode())
            except OSError as exc:
                status, text = 0, str(exc)
            result["calls"].append({"status": status, "body": text})
        for name, url in spec.get("gets", {}).items():
            result[name] = get(url)
        if spec.get("term_calls"):
            terminated = time.monotonic()
            sidecar.send_signal(signal.SIGTERM)
            ready: int | str = 200
            while ready == 200 and time.monotonic() < terminated + 10:
                try:
                    ready = get(spec["readiness_url"])[0]
                except OSError:
                    ready = "closed"  # a native sidecar may be gone already
                time.sleep(0.02)
            result["readiness_after_term"] = ready
            result["term_calls"] = []
            for url, body in spec["term_calls"]:
                try:
                    result["term_calls"].append(get(url, json.dumps(body).encode())[0])
                except OSError as exc:
                    result["term_calls"].append(str(exc))
            try:
                sidecar.wait(60)
            except subprocess.TimeoutExpired:
                pass
            result["exited_after_term_s"] = round(time.monotonic() - terminated, 1)
    finally:
        for sock in app:
            sock.close()
        sidecar.terminate()
        mock.terminate()
        try:
            out, _ = sidecar.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            sidecar.kill()
            out, _ = sidecar.communicate()
        mock.wait(timeout=30)
        result["sidecar_exit"] = sidecar.returncode
        result["sidecar_log"] = out.decode(errors="replace")[-4000:]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
