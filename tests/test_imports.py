"""No import cycles among the modules of ``proxy``, masked or not; and what a process loads.

The graph is read from the source: every module-level import (not those under
``if TYPE_CHECKING:``, nor those inside functions, which load on first use), and
every name a package exports lazily (``proxy/lazy.py``), since such a name hides an
import rather than removing it. Importing ``a.b.c`` runs ``a`` and ``a.b`` too, so
an import reaches the parent packages, except those the importer lives in (they
are already running when it runs).

What a process loads is read from the process itself: CPython's ``-X importtime``
(``PYTHONPROFILEIMPORTTIME``) writes a line to stderr for every module it imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import proxy
from tests.servers import SidecarProcess, default_config

ROOT = Path(proxy.__file__).parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()
#: count ``if TYPE_CHECKING:`` imports too (one test does)
TYPE_LEVEL = False


def _is_type_checking(test: ast.expr) -> bool:
    if TYPE_LEVEL:
        return False
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level(body: list[ast.stmt]):
    """Statements that run when the module is imported (into if/try blocks, not functions or classes)."""
    for node in body:
        if isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _top_level(block)
        else:
            yield node


def _imports(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _top_level(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # a submodule, if it is one
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            # lazy exports: {"Name": "proxy.module"}
            found.update(
                v.value
                for v in node.value.values
                if isinstance(v, ast.Constant) and isinstance(v.value, str) and v.value.startswith("proxy.")
            )
    edges = set()
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    for target in found:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            ancestor = ".".join(parts[:i])
            if ancestor in MODULES and ancestor not in own:
                edges.add(ancestor)
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle() -> None:
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    assert graph["proxy.upstream"] and graph["proxy.router.router"]  # the graph was read
    assert _cycles(graph) == []


def test_the_call_does_not_know_its_observers(monkeypatch) -> None:
    """Even for type checking: the call is the seam telemetry implements, not a user of telemetry."""
    monkeypatch.setattr(sys.modules[__name__], "TYPE_LEVEL", True)
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    assert not any(m.startswith("proxy.telemetry") for m in graph["proxy.call"])
    assert not [c for c in _cycles(graph) if "proxy.call" in c or any(m.startswith("proxy.telemetry") for m in c)]


def test_the_graph_sees_a_cycle(tmp_path) -> None:
    """The check itself: a lazily exported name that closes a circle is found."""
    graph = {"proxy.a": {"proxy.b"}, "proxy.b": {"proxy.c"}, "proxy.c": {"proxy.a"}, "proxy.d": set()}
    assert _cycles(graph) == [["proxy.a", "proxy.b", "proxy.c"]]
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    graph["proxy.endpoint_config"] = graph["proxy.endpoint_config"] | {"proxy.router"}  # router → upstream → here
    graph["proxy.router"] = graph["proxy.router"] | {"proxy.router.router"}
    assert _cycles(graph)


@pytest.mark.parametrize(
    "module",
    [
        "proxy.upstream",
        "proxy.auth",
        "proxy.call",
        "proxy.telemetry.metrics",
        "proxy.router.config",
        "proxy.config",
        "proxy.server",
    ],
)
def test_module_imports_alone(module: str) -> None:
    """A fresh interpreter imports the module first, before anything else of ``proxy``."""
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, timeout=60)


#: what the default config (memory cache, no tracing, no corpora, no discovery, no fleet
#: limits, answers under the compression threshold) has no use for: each is loaded only when
#: configured, or on first use
UNUSED_BY_DEFAULT = (
    "redis",  # a Redis cache or fleet limits
    "hiredis",
    "opentelemetry",  # tracing
    "zstandard",  # compressed cache entries, zstd request bodies
    "proxy.cache.redis",
    "proxy.fleet.budget",
    "proxy.telemetry.tracing",
    "proxy.rag.service",  # corpora
    "proxy.discovery.kube",  # discovery
    "proxy.discovery.dns",
    "proxy.kube",  # the injector
)


def _imported(stderr: str) -> set[str]:
    """Modules named by ``-X importtime`` lines ("import time: self | cumulative | name")."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "cumulative" not in line
    }


def test_serve_loads_only_what_the_default_config_uses(tmp_path, mock_provider, monkeypatch) -> None:
    """``llm-sidecar serve`` (the console script), ready and after calls of both dialects, JSON and streamed."""
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    sidecar = SidecarProcess(default_config(mock_provider.url, server={"drain_timeout": 1}), tmp_path)
    try:
        with httpx.Client(timeout=10) as client:
            for stream in (False, True):
                chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
                assert client.post(sidecar.url + "/v1/chat/completions", json=chat).status_code == 200
                message = {"model": "claude-sonnet", "max_tokens": 50, "stream": stream, "messages": chat["messages"]}
                assert client.post(sidecar.url + "/anthropic/v1/messages", json=message).status_code == 200
        sidecar.metrics()  # a scrape
    finally:
        sidecar.stop()
    loaded = _imported(sidecar.log.read_text())
    assert {"aiohttp", "yaml", "proxy.pipeline", "proxy.cache.memory"} <= loaded  # the lines were read
    assert sorted(m for m in loaded if any(m == u or m.startswith(u + ".") for u in UNUSED_BY_DEFAULT)) == []
