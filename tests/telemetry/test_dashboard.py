"""The Grafana dashboard: every panel titled and with a unit, every query on metrics the sidecar exports.

When a ``prometheus`` binary is installed (Debian: ``apt-get install prometheus``), a
real Prometheus scrapes a running sidecar and evaluates every dashboard expression.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.servers import PROVIDER_KEY, default_config, free_port
from tests.telemetry.conftest import Scrape

DASHBOARD = Path(__file__).resolve().parents[2] / "helm" / "llm-sidecar" / "files" / "dashboard.json"
ROWS = {"Traffic", "Latency", "Errors and fallbacks", "Endpoint health and saturation", "Cache effectiveness",
        "Tokens and cost"}
#: labels that Prometheus adds at scrape time (the ServiceMonitor/PodMonitor relabelling)
TARGET_LABELS = {"pod", "namespace", "job", "instance", "container"}
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_BY = re.compile(r"\bby \(([^)]*)\)")


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in panels(dashboard) for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


@pytest.fixture(scope="module")
def live(server_loop) -> Any:
    """A sidecar that has seen every kind of call, and one scrape of it."""
    from tests.servers import MockProvider, RefusedPort, Sidecar

    provider = MockProvider(server_loop)
    dead = RefusedPort()
    config = default_config(provider.url, telemetry={"prices": {"gpt-4o-mini": {"input": 1, "output": 2}}})
    config["model_groups"]["gpt-4o-mini"]["endpoints"].insert(0, {
        "name": "dead", "url": dead.url + "/v1", "api_key": PROVIDER_KEY, "priority": -1})
    sidecar = Sidecar(server_loop, config)
    client = sidecar.openai()
    for _ in range(2):  # a miss, then a hit
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "d"}], temperature=0)
    list(client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "s"}], stream=True,
                                        stream_options={"include_usage": True}))
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "e"}],
                                       extra_headers={"x-mock-status": "500"})
    except Exception:
        pass
    with urllib.request.urlopen(sidecar.admin_url + "/metrics", timeout=10) as response:
        scrape = Scrape(response.read().decode())
    yield sidecar, scrape, client
    sidecar.stop()
    provider.stop()
    dead.release()


def test_panels_have_titles_units_and_rows() -> None:
    dashboard = load()
    assert dashboard["title"]
    rows = {p["title"] for p in dashboard["panels"] if p["type"] == "row"}
    assert ROWS <= rows
    for panel in panels(dashboard):
        assert panel["title"].strip(), panel
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"model_group", "pod"} <= set(variables)


def test_queries_use_only_exported_metrics_and_labels(live) -> None:
    _sidecar, scrape, _client = live
    names = scrape.names()
    labels_of: dict[str, set[str]] = {}
    for sample in scrape.samples:
        labels_of.setdefault(sample.name, set()).update(sample.labels)
    for family in scrape.families:  # a family without samples yet still has its own name
        labels_of.setdefault(family.name, set())
    for expr in expressions(load()):
        selectors = _SELECTOR.findall(expr) or re.findall(r"label_values\(([a-z_]+),", expr)
        assert selectors, expr
        for selector in selectors:
            name, matchers = selector if isinstance(selector, tuple) else (selector, "")
            assert name in names, f"{name} is not exported (in {expr})"
            for label in _MATCHER.findall(matchers):
                assert label in labels_of[name] | TARGET_LABELS, f"{name} has no label {label} (in {expr})"
        for grouping in _BY.findall(expr):
            for label in (g.strip() for g in grouping.split(",")):
                assert label == "le" or any(label in labels_of.get(n, set()) | TARGET_LABELS
                                            for n, _ in _SELECTOR.findall(expr)), f"{label} in {expr}"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="prometheus is not installed (apt-get install prometheus provides it)")
def test_prometheus_evaluates_every_expression(live) -> None:
    sidecar, _scrape, client = live
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="prometheus-test-") as directory:
        config = Path(directory) / "prometheus.yml"
        target = sidecar.admin_url.removeprefix("http://")
        config.write_text(f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n"
                          f"scrape_configs:\n  - job_name: sidecar\n    static_configs:\n"
                          f"      - targets: ['{target}']\n        labels: {{pod: sidecar-0}}\n")
        process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={directory}/data",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        api = f"http://127.0.0.1:{port}/api/v1"
        try:
            deadline = time.monotonic() + 30
            samples = 0
            while time.monotonic() < deadline and samples < 4:
                time.sleep(0.5)
                # keep traffic flowing so rates are not all zero
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "p"}])
                try:
                    result = _get(api + "/query?" + urllib.parse.urlencode(
                        {"query": "count_over_time(llm_sidecar_calls_in_flight[1m])"}))["data"]["result"]
                except OSError:
                    continue
                samples = int(float(result[0]["value"][1])) if result else 0
            assert samples >= 4, "prometheus did not scrape the sidecar"
            empty = []
            for expr in expressions(load()):
                query = (expr.replace("$__rate_interval", "15s").replace("$__range", "5m")
                         .replace("$model_group", ".*").replace("$pod", ".*"))
                if query.startswith("label_values("):
                    metric, label = re.match(r"label_values\((\w+), (\w+)\)", query).groups()
                    values = _get(f"{api}/label/{label}/values?" + urllib.parse.urlencode({"match[]": metric}))
                    assert values["status"] == "success" and values["data"], query
                    continue
                answer = _get(api + "/query?" + urllib.parse.urlencode({"query": query}))
                assert answer["status"] == "success", (query, answer)
                if not answer["data"]["result"]:
                    empty.append(query)
            # Every panel but those for states this run never reached has data.
            allowed_empty = ("circuit_state", "retries_total", "cache_saved", "cooldown")
            assert [q for q in empty if not any(a in q for a in allowed_empty)] == []
        finally:
            process.terminate()
            process.wait(10)
