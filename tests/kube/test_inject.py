"""`llm-sidecar inject`: the same mutation applied offline to multi-document YAML."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonpatch
import pytest
import yaml

from proxy.kube import inject
from proxy.kube.sidecar import Context, plan
from tests.kube.cases import SETTINGS
from tests.kube.conftest import ROOT

SCRIPT = Path(sys.executable).with_name("llm-sidecar")
EXAMPLES = ROOT / "k8s" / "examples" / "app.yaml"


def run(argv: list[str], text: str) -> tuple[int, str]:
    """The installed ``llm-sidecar inject``, as a user runs it."""
    res = subprocess.run([str(SCRIPT), "inject", *argv], input=text, capture_output=True, text=True, timeout=60)
    return res.returncode, res.stdout


def test_examples_are_injected_and_opt_outs_untouched() -> None:
    code, out = run(["-f", "-"], EXAMPLES.read_text())
    assert code == 0
    docs = list(yaml.safe_load_all(out))
    deploy, job, pod = docs
    assert deploy["spec"]["template"]["spec"]["initContainers"][0]["name"] == "llm-sidecar"
    assert job["spec"]["template"]["spec"]["initContainers"][0]["restartPolicy"] == "Always"
    assert "initContainers" not in pod["spec"]
    # The opted-out document keeps its bytes (comments included).
    assert "name: debug-shell" in out.split("---")[-1] and "\n      command: [python3, -c, " in out


def test_every_workload_kind_list_and_foreign_documents() -> None:
    template = {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    workloads = [
        {"apiVersion": "apps/v1", "kind": k, "metadata": {"name": k.lower()}, "spec": {"template": template}}
        for k in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")
    ] + [
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "cj"},
            "spec": {"jobTemplate": {"spec": {"template": template}}},
        },
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": template["spec"]},
    ]
    text = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": workloads})
    text += "---\n# a comment that must survive\nkind: Service\napiVersion: v1\nmetadata: {name: s}\n"
    code, out = run(["-f", "-", "--kube-version", "1.28"], text)
    assert code == 0
    lst, svc = out.split("---\n")
    assert svc == "# a comment that must survive\nkind: Service\napiVersion: v1\nmetadata: {name: s}\n"
    for item in yaml.safe_load(lst)["items"]:
        spec = item.get("spec", {})
        pod_spec = (spec.get("jobTemplate", {}).get("spec", spec).get("template") or item)["spec"]
        # 1.28: plain containers, and the CronJob (restartPolicy unset) still gets one.
        assert pod_spec["containers"][-1]["name"] == "llm-sidecar", item["kind"]


def test_own_applier_agrees_with_jsonpatch() -> None:
    pod = yaml.safe_load((ROOT / "tests" / "kube" / "golden" / "pod-existing-env.yaml").read_text())
    decision = plan(
        pod,
        SETTINGS,
        Context(namespace="demo-app", namespace_labels={"llm-sidecar.io/inject": "enabled"}, kube_version=(1, 30)),
    )
    expected = jsonpatch.apply_patch(pod, decision.patch)
    inject.apply_patch(pod, decision.patch)
    assert pod == expected


def test_injected_output_is_stable() -> None:
    _, once = run(["-f", "-"], EXAMPLES.read_text())
    _, twice = run(["-f", "-"], once)
    assert once == twice


def test_settings_file_and_image_flag(tmp_path) -> None:
    settings = tmp_path / "injector.yaml"
    settings.write_text("sidecar: {image: reg.local/llm-sidecar:1.2.3, keysMode: files}\n")
    code, out = run(
        ["-f", "-", "--settings", str(settings), "--image", "reg.local/llm-sidecar:canary"], EXAMPLES.read_text()
    )
    side = next(yaml.safe_load_all(out))["spec"]["template"]["spec"]["initContainers"][0]
    assert side["image"] == "reg.local/llm-sidecar:canary"
    assert "envFrom" not in side
    settings.write_text("sidecar: {imag: typo}\n")
    assert run(["-f", "-", "--settings", str(settings)], "")[0] == 2


def test_installed_commands_take_their_options(tmp_path) -> None:
    """`llm-sidecar inject -f FILE` and `llm-sidecar webhook --host=...` as the README and the chart run them."""
    import subprocess
    import sys

    exe = str(__import__("pathlib").Path(sys.executable).with_name("llm-sidecar"))
    done = subprocess.run([exe, "inject", "-f", str(EXAMPLES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (
        next(yaml.safe_load_all(done.stdout))["spec"]["template"]["spec"]["initContainers"][0]["name"] == "llm-sidecar"
    )
    # The injector Deployment's args; without certificate files it must fail on those, not on its options.
    done = subprocess.run(
        [
            exe,
            "webhook",
            "--host=0.0.0.0",
            "--port=8443",
            "--tls-cert-file",
            str(tmp_path / "no.crt"),
            "--tls-key-file",
            str(tmp_path / "no.key"),
            "--no-kube",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "unrecognized arguments" not in done.stderr and "cannot start" in done.stderr


def test_a_malformed_workload_or_a_file_not_utf8_is_one_line_never_a_traceback(tmp_path: Path) -> None:
    # A typo kubectl would refuse (containers not a list, ports a string) raised out of plan():
    # a traceback, exit 1, and nothing written for the documents that were fine.
    good = "kind: Pod\nmetadata: {name: good}\nspec: {containers: [{name: a, image: x}]}\n"
    bad = [
        "kind: Pod\nmetadata: {name: p}\nspec: {containers: x}\n",
        "kind: Deployment\nmetadata: {name: d}\nspec: {template: {spec: {containers: [{name: a, ports: bad}]}}}\n",
    ]
    done = subprocess.run(
        [str(SCRIPT), "inject", "-f", "-"], input="---\n".join([*bad, good]), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr
    *kept, injected = done.stdout.split("---\n")
    assert kept == bad  # written back as they came
    assert yaml.safe_load(injected)["spec"]["initContainers"][0]["name"] == "llm-sidecar"
    assert "pod/p: not injected: its pod template is malformed" in done.stderr
    assert "deployment/d: not injected: its pod template is malformed" in done.stderr
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"kind: Pod\nmetadata: {name: caf\xe9}\n")
    done = subprocess.run([str(SCRIPT), "inject", "-f", str(latin)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"llm-sidecar inject: {latin} is not UTF-8 text"]


def test_a_document_that_is_not_yaml_is_named_on_stderr() -> None:
    # A typo in a Pod's YAML was written back without a word: no "injected", no "skipped".
    good = "kind: Pod\nmetadata: {name: good}\nspec: {containers: [{name: a, image: x}]}\n"
    typo = "kind: Pod\nmetadata: {name: p\nspec: {containers: [{name: a, image: x}]}\n"
    done = subprocess.run(
        [str(SCRIPT), "inject", "-f", "-"], input=good + "---\n" + typo, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.split("---\n")[1] == typo
    assert done.stderr.splitlines() == [
        "pod/good: injected",
        "document 2 is not valid YAML at line 3, column 5: expected ',' or '}', but got ':'; written back as it is",
    ]


@pytest.mark.parametrize(
    "content, why",
    [
        (b"a: [\n", "not valid YAML at line 2, column 1: expected the node content, but found '<stream end>'"),
        (b"- 1\n", "not a mapping of settings"),
        (b"\xff\xfe", "not UTF-8 text"),
    ],
    ids=["not-yaml", "a-list", "not-utf8"],
)
def test_a_bad_settings_file_is_one_line_for_inject_and_the_webhook(tmp_path, test_ca, content, why) -> None:
    # The chart renders it (injector.yaml); a broken one was a traceback (exit 1) in both commands,
    # or, for inject and bad YAML, pyyaml's three-line message.
    settings = tmp_path / "injector.yaml"
    settings.write_bytes(content)
    expected = f"{settings}: {why}"
    done = subprocess.run(
        [str(SCRIPT), "inject", "-f", "-", "--settings", str(settings)],
        input="kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: x}]}\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stderr.splitlines() == [f"llm-sidecar inject: {expected}"]
    flags = ["--no-kube", "--tls-cert-file", str(test_ca["cert"]), "--tls-key-file", str(test_ca["key"])]
    done = subprocess.run(
        [str(SCRIPT), "webhook", *flags, "--port", "0", "--settings", str(settings)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert [json.loads(line)["msg"] for line in done.stderr.splitlines()] == [f"cannot start: {expected}"]
