"""``k8s/kind/e2e.sh`` and the Kubernetes page's commands: what can be checked of them without a cluster.

Its flow (install, inject, a cache hit in the sidecar's metrics) is run with
podman by ``make e2e`` (tests/kube/test_e2e.py), with the same values file and
the script's own metrics check. Here: its shell is valid and free of SIGPIPE
races, and each kubectl command is accepted by kubectl (``--dry-run=client``
where kubectl can do it offline; otherwise it must get as far as contacting
the API server, so its arguments parsed). The same for the kubectl commands of the
README and ``docs/kubernetes.md``; their ``helm install`` is rendered with ``helm template``.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.kube.conftest import ROOT

SCRIPT = ROOT / "k8s" / "kind" / "e2e.sh"
#: Values of the script's variables where a kubectl command uses them.
VARIABLES = {"$root": str(ROOT), "$pod": "chat-app-7d4b9c-x2x9q", "$admin": "15190"}  # the injected admin port


def kubectl_commands() -> list[str]:
    """Every kubectl invocation in the script, its shell redirections and pipes cut off."""
    text = SCRIPT.read_text()
    found = []
    for m in re.finditer(r"(?:^|\$\(|\|\s*|;\s*|do\s+)\s*(kubectl\s[^\n]*)", text, re.M):
        command = re.split(r"\s*(?:>|\||&&|\)\"|\)$|&\s)", m.group(1))[0]
        for var, value in VARIABLES.items():
            command = command.replace(f'"{var}', f'"{value}').replace(var, value)
        found.append(command)
    return found


DOCS = [ROOT / "README.md", ROOT / "docs" / "kubernetes.md"]


def docs_commands(tool: str) -> list[str]:
    """The ``tool`` commands of the README's and the Kubernetes page's shell blocks, continuations joined."""
    found = []
    for page in DOCS:
        for block in re.findall(r"```(?:bash|sh)[^\n]*\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                command = re.sub(r"\s+", " ", line.split(" #")[0]).strip()
                if command.startswith(f"{tool} ") and command not in found:
                    found.append(command)
    return found


def test_script_is_valid_bash_without_pipefail_sigpipe() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    text = SCRIPT.read_text()
    assert "set -euo pipefail" in text
    # Under pipefail, a reader that stops early (head, grep -q) kills the writer with SIGPIPE.
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    racy = [line for line in code if re.search(r"\|\s*(head\b|grep\s+-\w*q)", line)]
    assert not racy, racy


def test_finds_the_commands() -> None:
    commands = kubectl_commands()
    assert len(commands) >= 10 and any("port-forward" in c for c in commands), commands


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed")
    config = tmp_path_factory.mktemp("kube") / "config"
    # A cluster that refuses connections: a command that gets there has parsed its arguments.
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "none",
                "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "none", "user": {"token": "x"}}],
                "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
            }
        )
    )
    return ["kubectl", f"--kubeconfig={config}", "--request-timeout=5s"]


@pytest.mark.parametrize("command", kubectl_commands() + docs_commands("kubectl"))
def test_kubectl_command_is_accepted(command: str, kubectl: list[str]) -> None:
    argv = [*kubectl, *shlex.split(command)[1:]]
    if argv[len(kubectl) :][0:1] == ["create"] or argv[len(kubectl) + 2 :][0:1] == ["create"]:
        argv += ["--dry-run=client", "-o", "yaml"]  # create works offline with a client-side dry run
    if "--dry-run=client" in argv:  # works offline: run it and read its output
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert yaml.safe_load(res.stdout)["kind"]
        return
    if "apply" in argv:  # needs a server even with --dry-run=client: check what it would apply instead
        files = [argv[i + 1] for i, a in enumerate(argv) if a == "-f"]
        validate = Path(sys.executable).with_name("kubernetes-validate")
        for f in files:
            if f != "-" and validate.exists():
                res = subprocess.run([str(validate), "--strict", "-k", "1.30.0", f], capture_output=True, text=True)
                assert res.returncode == 0 and "ERROR" not in res.stdout, res.stdout + res.stderr
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert re.search(r"connection refused|Unable to connect|dial tcp", res.stderr), (
        f"kubectl refused the command itself:\n{res.stderr}"
    )


def test_docs_install_renders(helm: str) -> None:
    """The page's ``helm install`` renders offline with the same arguments (``helm template``)."""
    installs = docs_commands("helm install")
    assert installs, "neither the README nor docs/kubernetes.md shows a helm install"
    for command in installs:
        _, _, release, chart, *rest = shlex.split(command)
        res = subprocess.run(
            [helm, "template", release, str(ROOT / chart), *rest, "--kube-version", "1.30.0"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        settings = next(d for d in yaml.safe_load_all(res.stdout) if d and "injector.yaml" in (d.get("data") or {}))
        secret = yaml.safe_load(settings["data"]["injector.yaml"])["sidecar"]["keysSecret"]
        created = [c for c in docs_commands("kubectl") if " create secret " in c]
        assert any(f" {secret} " in f"{c} " for c in created), f"the docs never create the Secret {secret}"
