"""The documentation's snippets run as written (the markers are described in docs/development.md).

Every fenced ``bash``, ``sh``, ``python`` and ``yaml`` block of README.md and docs/ is marked
``run`` or ``norun: why``. Each page's runnable blocks run top to bottom, as a reader would
follow them, against that page's own ``llm-sidecar demo`` (started as users start it, on free
ports that replace 8080 and 9090 in the snippets): YAML through ``llm-sidecar check-config``,
Python with the project's interpreter, bash with ``bash -eu -o pipefail``. A ``text`` block right
after a runnable one is its expected output (``...`` stands for any text).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from proxy.config import Config
from tests.servers import LLM_SIDECAR, answers, start_on_free_ports

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"bash", "sh", "python", "yaml"}
FENCE = re.compile(r"^```(\S*)[ \t]*(.*)$")
#: what the snippets may use: the keys their configs name (never real ones), a corpus directory
ENV = {"OPENAI_API_KEY": "sk-docs-example", "ANTHROPIC_API_KEY": "sk-ant-docs-example"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    marker: str
    code: str
    expected: str | None = None

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    found: list[Block] = []
    lines = page.read_text().splitlines()
    i, previous_end = 0, -1
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        language, marker, code = opening.group(1), opening.group(2).strip(), "\n".join(lines[i + 1 : end]) + "\n"
        follows = found and previous_end >= 0 and not any(line.strip() for line in lines[previous_end + 1 : i])
        if language == "text" and follows and found[-1].marker == "run":
            found[-1] = Block(found[-1].page, found[-1].line, found[-1].language, "run", found[-1].code, code)
        else:
            found.append(Block(page, i + 1, language, marker, code))
        previous_end = end
        i = end + 1
    return found


SNIPPETS = [block for page in PAGES for block in blocks(page) if block.language in LANGUAGES]


def test_every_snippet_is_marked_runnable_or_says_why_not() -> None:
    assert len(PAGES) > 5 and SNIPPETS
    unmarked = [str(b) for b in SNIPPETS if b.marker != "run" and not re.fullmatch(r"norun: \S.*", b.marker)]
    assert not unmarked, f"mark these `run` or `norun: why`: {unmarked}"


class Demo:
    """``llm-sidecar demo`` on free ports, as the quick start runs it."""

    def __init__(self, log: Path) -> None:
        self.process, (self.port, self.admin_port) = start_on_free_ports(
            lambda port, admin_port: [LLM_SIDECAR, "demo", "--port", str(port), "--admin-port", str(admin_port)],
            lambda _, admin_port: answers(f"http://127.0.0.1:{admin_port}/readyz"),
            log,
            ports=2,
            timeout=60,
        )

    def localize(self, code: str) -> str:
        return code.replace("127.0.0.1:8080", f"127.0.0.1:{self.port}").replace(
            "127.0.0.1:9090", f"127.0.0.1:{self.admin_port}"
        )

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where snippets run: it holds the corpus directory the retrieval examples name."""
    directory = tmp_path_factory.mktemp("docs")
    (directory / "corpora" / "handbook").mkdir(parents=True)
    (directory / "corpora" / "handbook" / "leave.md").write_text("Annual leave is 25 days.\n")
    return directory


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    server = Demo(tmp_path / "demo.log")
    yield server
    server.stop()


def matches(expected: str, output: str) -> bool:
    pattern = "\n".join(".*".join(map(re.escape, line.split("..."))) for line in expected.strip().splitlines())
    return re.fullmatch(pattern, output.strip()) is not None


def run(block: Block, demo: Demo | None, workdir: Path) -> str:
    code = demo.localize(block.code) if demo is not None else block.code
    env = {**os.environ, **ENV, "PATH": f"{Path(LLM_SIDECAR).parent}{os.pathsep}{os.environ['PATH']}"}
    if block.language == "yaml":
        config = workdir / "sidecar.yaml"
        config.write_text(code)
        command = [LLM_SIDECAR, "check-config", str(config)]
    elif block.language == "python":
        command = [sys.executable, "-c", code]
    else:
        command = ["bash", "-eu", "-o", "pipefail", "-c", code]
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{block} failed:\n{result.stdout}\n{result.stderr}"
    if block.language == "yaml":
        assert ": ok: " in result.stdout, f"{block}: {result.stdout}"
    if block.expected is not None:
        assert matches(block.expected, result.stdout), f"{block} printed:\n{result.stdout}"
    return result.stdout


RUNNABLE = {page: [b for b in SNIPPETS if b.page == page and b.marker == "run"] for page in PAGES}


@pytest.mark.parametrize(
    "page", [page for page, runnable in RUNNABLE.items() if runnable], ids=lambda page: str(page.relative_to(ROOT))
)
def test_the_pages_runnable_snippets_run_top_to_bottom(
    page: Path, workdir: Path, request: pytest.FixtureRequest
) -> None:
    needs_demo = any(block.language != "yaml" for block in RUNNABLE[page])
    demo = request.getfixturevalue("demo") if needs_demo else None
    for block in RUNNABLE[page]:
        run(block, demo, workdir)


def test_the_quick_start_expects_a_miss_then_a_hit() -> None:
    first = next(b for b in RUNNABLE[ROOT / "README.md"] if b.language == "python")
    assert first.expected is not None
    assert [line.split()[0] for line in first.expected.splitlines()] == ["miss", "hit"]


def test_expected_output_patterns() -> None:
    assert matches("miss a b ...\nhit a b ...", "miss a b c\nhit a b c d")
    assert not matches("miss a ...", "hit a")
    assert not matches("miss a ...", "miss a b\nhit a b")


LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The fragment each heading of ``page`` gets, as GitHub makes them."""
    found = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (heading := re.match(r"#+ (.*)", line)):
            found.add(re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-"))
    return found


def test_links_between_the_pages_resolve_to_files_in_the_repository() -> None:
    tracked = set(
        subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    )
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            path, _, fragment = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            relative = str(resolved.relative_to(ROOT))
            if path and relative not in tracked and not any(t.startswith(relative + "/") for t in tracked):
                broken.append(f"{page.name}: {target} (not in the repository)")
            elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_pages_speak_of_the_project_only() -> None:
    for page in PAGES:
        assert not re.search(r"\b[Ii]ssue #?\d", page.read_text()), page.name


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The config model an annotation holds, and how: directly, as dict values or as list items."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is dict:
        return _model_in(args[1])[0], "dict"
    if typing.get_origin(annotation) in (list, tuple):
        return _model_in(args[0])[0], "list"
    for arg in args:  # Optional and other unions
        if (model := _model_in(arg))[0] is not None:
            return model
    return None, ""


def _same(default: Any, shown: Any) -> bool:
    if isinstance(default, (set, frozenset)):
        return isinstance(shown, list) and set(shown) == default
    if isinstance(default, tuple):
        return shown == list(default)
    return bool(default == shown)


def test_the_configuration_page_shows_every_key() -> None:
    """Its "Every key" example names every field of the config, at every level (the alternatives in
    comments), with the code's default wherever the code has one (example values stand where it has none)."""
    page = ROOT / "docs" / "configuration.md"
    (example,) = [b for b in blocks(page) if b.language == "yaml" and "model_groups:" in b.code and "server:" in b.code]
    comments = " ".join(line.partition("#")[2] for line in example.code.splitlines())
    missing: list[str] = []

    def walk(model: type[BaseModel], node: Any, path: str) -> None:
        for name, field in model.model_fields.items():
            if not isinstance(node, dict) or name not in node:
                if not re.search(rf"\b{name}\b", comments):
                    missing.append(path + name)
                continue
            sub, how = _model_in(field.annotation)
            value = node[name]
            default = None if field.is_required() else field.get_default(call_default_factory=True)
            if not isinstance(default, BaseModel) and default is not None and not _same(default, value):
                missing.append(f"{path}{name} (the code's default is {default!r}, the page shows {value!r})")
            if sub is None or not value:
                continue
            if how == "dict":
                walk(sub, next(iter(value.values())), f"{path}{name}.NAME.")
            elif how == "list":
                walk(sub, value[0], f"{path}{name}[].")
            else:
                walk(sub, value, f"{path}{name}.")

    walk(Config, yaml.safe_load(example.code), "")
    assert not missing, f"not in the configuration page's full example, or not as the default: {missing}"
