"""``llm-sidecar inject``: the webhook's mutation applied offline to YAML.

    llm-sidecar inject -f deploy.yaml | kubectl apply -f -

Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs and
``List``s of them are injected (their pod template is what gets the patch);
every other document, and a workload whose pod template cannot be read (a shape
kubectl refuses too), is written back byte for byte. Pods count as opted in
unless they carry ``llm-sidecar.io/inject: disabled``: running the command is
the opt-in. A summary of what was done goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import yaml

from proxy.kube.sidecar import INJECT, Context, SettingsError, SidecarSettings, plan

#: kind → path of keys from the document to its pod template
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}

_SEPARATOR = re.compile(r"^---[ \t]*(?:#.*)?$", re.MULTILINE)


def split_documents(text: str) -> list[str]:
    """Split a YAML stream at ``---`` lines, keeping each document's text as written."""
    parts: list[str] = []
    start = 0
    for m in _SEPARATOR.finditer(text):
        parts.append(text[start : m.start()])
        start = m.end() + 1 if m.end() < len(text) else m.end()
    parts.append(text[start:])
    return parts


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def apply_patch(doc: MutableMapping[str, Any], patch: list[dict[str, Any]]) -> None:
    """Apply the ``add``/``replace`` JSONPatch operations that :func:`plan` makes, in place."""
    for op in patch:
        *parents, last = [_unescape(t) for t in op["path"].split("/")[1:]]
        target: Any = doc
        for token in parents:
            target = target[int(token)] if isinstance(target, list) else target[token]
        if isinstance(target, list):
            if last == "-":
                target.append(op["value"])
            elif op["op"] == "add":
                target.insert(int(last), op["value"])
            else:
                target[int(last)] = op["value"]
        else:
            target[last] = op["value"]


def _template(doc: MutableMapping[str, Any]) -> MutableMapping[str, Any] | None:
    path = TEMPLATE_PATHS.get(doc.get("kind", ""))
    if path is None:
        return None
    node: Any = doc
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return None
    return node


def inject_object(doc: MutableMapping[str, Any], settings: SidecarSettings, ctx_for: Any, log: list[str]) -> bool:
    """Inject one object (or each item of a ``List``) in place; True if anything changed."""
    if doc.get("kind") == "List" or (doc.get("kind", "").endswith("List") and "items" in doc):
        changed = False
        for item in doc.get("items") or []:
            changed |= inject_object(item, settings, ctx_for, log)
        return changed
    template = _template(doc)
    name = f"{doc.get('kind', '?').lower()}/{(doc.get('metadata') or {}).get('name', '?')}"
    if template is None:
        return False
    template.setdefault("metadata", {})
    ctx: Context = ctx_for(doc)
    try:
        decision = plan(template, settings, ctx)
    except Exception as exc:  # noqa: BLE001 - a shape kubectl would refuse too (containers: x): the same as a skip
        log.append(f"{name}: not injected: its pod template is malformed ({type(exc).__name__}: {exc})")
        return False
    if not decision.injected:
        log.append(f"{name}: skipped ({'; '.join(decision.reasons)})")
        return False
    apply_patch(template, decision.patch)
    log.append(f"{name}: injected" + "".join(f" ({n})" for n in decision.notes))
    return True


def inject_stream(text: str, settings: SidecarSettings, ctx_for: Any, log: list[str]) -> str:
    """Inject every workload in a multi-document YAML text; untouched documents keep their bytes."""
    out: list[str] = []
    for number, part in enumerate(split_documents(text), 1):
        try:
            doc = yaml.safe_load(part)
        except yaml.YAMLError as exc:
            # Said, not only passed on: else a typo in a Pod reads as "nothing to inject".
            log.append(f"document {number} is {_yaml_problem(exc)}; written back as it is")
            out.append(part)
            continue
        if isinstance(doc, dict) and inject_object(doc, settings, ctx_for, log):
            out.append(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
        else:
            out.append(part)
    return "---\n".join(p if p.endswith("\n") or not p else p + "\n" for p in out)


def load_settings(path: str | None) -> SidecarSettings:
    """Read the ``sidecar:`` map of an ``injector.yaml`` (as the chart renders it); a ``SettingsError``
    in one line for a file that is not one."""
    if path is None:
        return SidecarSettings()
    with open(path, "rb") as f:
        raw = f.read()
    try:
        data = yaml.safe_load(raw.decode()) or {}
    except UnicodeDecodeError:
        raise SettingsError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: {_yaml_problem(exc)}") from None
    section = data.get("sidecar", data) if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise SettingsError(f"{path}: not a mapping of settings")
    return SidecarSettings.from_mapping(section)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and why, on one line (``str(exc)`` quotes the lines around it)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"not valid YAML{where}: {getattr(exc, 'problem', None) or type(exc).__name__}"


def run(args: argparse.Namespace) -> int:
    """``llm-sidecar inject`` (its arguments are defined in :mod:`proxy.cli`)."""
    try:
        settings = load_settings(args.settings)
        if args.image:
            settings = dataclasses.replace(settings, image=args.image)
    except (OSError, SettingsError, yaml.YAMLError) as exc:
        print(f"llm-sidecar inject: {exc}", file=sys.stderr)
        return 2

    def ctx_for(doc: MutableMapping[str, Any]) -> Context:
        ns = (doc.get("metadata") or {}).get("namespace") or args.namespace
        return Context(namespace=ns, namespace_labels={INJECT: "enabled"}, kube_version=args.kube_version)

    try:
        if args.filename == "-":
            text = sys.stdin.read()
        else:
            with open(args.filename, encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        print(f"llm-sidecar inject: {exc}", file=sys.stderr)
        return 2
    except UnicodeDecodeError:
        print(f"llm-sidecar inject: {args.filename} is not UTF-8 text", file=sys.stderr)
        return 2
    log: list[str] = []
    sys.stdout.write(inject_stream(text, settings, ctx_for, log))
    for line in log:
        print(line, file=sys.stderr)
    return 0
