"""The Grafana dashboard: every panel titled and with a unit, every query on metrics the sidecar exports.

When a ``prometheus`` binary is installed (Debian: ``apt-get install prometheus``), a
real Prometheus scrapes a running sidecar and evaluates every dashboard expression.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.servers import PROVIDER_KEY, SidecarProcess, default_config, free_port
from tests.telemetry.conftest import Scrape

DASHBOARD = Path(__file__).resolve().parents[2] / "helm" / "llm-sidecar" / "files" / "dashboard.json"
ROWS = {
    "Traffic",
    "Latency",
    "Errors and fallbacks",
    "Endpoint health and saturation",
    "Cache effectiveness",
    "Tokens and cost",
}
#: labels that Prometheus adds at scrape time (the ServiceMonitor/PodMonitor relabelling)
TARGET_LABELS = {"pod", "namespace", "job", "instance", "container"}
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_BY = re.compile(r"\bby \(([^)]*)\)")


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def with_fleet(config: dict[str, Any], redis_url: str) -> dict[str, Any]:
    """The shared Redis and a fleet limit on ``mock-openai``, so the fleet panels have series."""
    config["cache"] = {"backend": "redis", "redis_url": redis_url}
    endpoints = config["model_groups"]["gpt-4o-mini"]["endpoints"]
    next(e for e in endpoints if e["name"] == "mock-openai")["fleet"] = {"max_concurrent": 100, "rpm": 100_000}
    return config


def expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in panels(dashboard) for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


@pytest.fixture(scope="module")
def live(server_loop, redis_server) -> Any:
    """A sidecar that has seen every kind of call, and one scrape of it."""
    from tests.servers import MockProvider, RefusedPort, Sidecar

    provider = MockProvider(server_loop)
    dead = RefusedPort()
    config = default_config(provider.url, telemetry={"prices": {"gpt-4o-mini": {"input": 1, "output": 2}}})
    config["model_groups"]["gpt-4o-mini"]["endpoints"].insert(
        0, {"name": "dead", "url": dead.url + "/v1", "api_key": PROVIDER_KEY, "priority": -1}
    )
    if redis_server.process is None:  # another test killed it
        redis_server.start()
    sidecar = Sidecar(server_loop, with_fleet(config, redis_server.url))
    client = sidecar.openai()
    for _ in range(2):  # a miss, then a hit
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "d"}], temperature=0)
    list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "s"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    try:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "e"}], extra_headers={"x-mock-status": "500"}
        )
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
                assert label == "le" or any(
                    label in labels_of.get(n, set()) | TARGET_LABELS for n, _ in _SELECTOR.findall(expr)
                ), f"{label} in {expr}"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


#: The configured names each kind of legend label must show (never a port name like llm-admin).
GROUPS = {"gpt-4o-mini", "claude-sonnet"}
UPSTREAMS = {"dead", "mock-openai", "mock-anthropic"}
PODS = {"chat-app-7d4b9-x2k4p", "llm-sidecar-gateway-5f6c8-qq7rt"}
#: the relabelling the chart's PodMonitor (sidecars) and ServiceMonitor (gateway) produce: the
#: Prometheus Operator attaches namespace, pod, container, service, job and endpoint (the port
#: name) as target labels, without honor_labels, so a scraped label of the same name is renamed
#: exported_<name>. An app's own metrics target in the same pod shares its pod label.
PROMETHEUS_CONFIG = """\
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: podMonitor/llm-sidecar/llm-sidecar-sidecars/0
    static_configs:
      - targets: ['{sidecar}']
        labels: {{__pod: chat-app-7d4b9-x2k4p, __container: llm-sidecar, __port: llm-admin}}
      - targets: ['{app}']
        labels: {{__pod: chat-app-7d4b9-x2k4p, __container: app, __port: metrics}}
    relabel_configs:
      - {{target_label: namespace, replacement: demo-app}}
      - {{source_labels: [__container], target_label: container}}
      - {{source_labels: [__pod], target_label: pod}}
      - {{target_label: job, replacement: llm-sidecar/llm-sidecar-sidecars}}
      - {{source_labels: [__port], target_label: endpoint}}
  - job_name: serviceMonitor/llm-sidecar/llm-sidecar-gateway/0
    static_configs:
      - targets: ['{gateway}']
    relabel_configs:
      - {{target_label: namespace, replacement: llm-sidecar}}
      - {{target_label: service, replacement: llm-sidecar-gateway}}
      - {{target_label: pod, replacement: llm-sidecar-gateway-5f6c8-qq7rt}}
      - {{target_label: container, replacement: gateway}}
      - {{target_label: job, replacement: llm-sidecar-gateway}}
      - {{target_label: endpoint, replacement: llm-admin}}
"""


def _serve(tmp_path: Path, mock_url: str, redis_url: str) -> SidecarProcess:
    """One sidecar as the pod runs it: the installed command on a config file."""
    config = default_config(
        mock_url,
        telemetry={"prices": {"gpt-4o-mini": {"input": 1, "output": 2}}},
        router={"health": {"interval": 0.5, "timeout": 0.5}},
    )
    config["model_groups"]["gpt-4o-mini"]["endpoints"].insert(
        0, {"name": "dead", "url": "http://127.0.0.1:9/v1", "api_key": PROVIDER_KEY, "priority": -1}
    )
    return SidecarProcess(with_fleet(config, redis_url), tmp_path)


def _traffic(url: str, stop: threading.Event) -> None:
    """Every kind of call, over and over, so that each panel has something to show."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    hello = [{"role": "user", "content": "d"}]
    while not stop.is_set():
        for call in (
            lambda: client.chat.completions.create(model="gpt-4o-mini", messages=hello, temperature=0),
            lambda: list(
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "s"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
            ),
            lambda: client.chat.completions.create(
                model="claude-sonnet", messages=hello, extra_headers={"x-mock-status": "500"}
            ),
        ):
            try:
                call()
            except (openai.APIError, OSError):
                pass
        stop.wait(0.1)


@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus is not installed (apt-get install prometheus provides it)"
)
def test_every_panel_shows_its_series_through_the_operator_relabelling(tmp_path: Path, mock_provider, redis) -> None:
    """Two running sidecars and an app's own metrics, scraped by a real Prometheus with the
    labels the Prometheus Operator attaches; each panel's query returns the series it means."""
    from prometheus_client import start_http_server

    app_port = free_port()
    start_http_server(app_port, addr="127.0.0.1")  # the app's own process_* metrics, in the same pod
    sidecars = [_serve(tmp_path, mock_provider.url, redis.url) for _ in range(2)]  # the pod's sidecar, a gateway
    stop = threading.Event()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        PROMETHEUS_CONFIG.format(
            sidecar=sidecars[0].admin_url.removeprefix("http://"),
            gateway=sidecars[1].admin_url.removeprefix("http://"),
            app=f"127.0.0.1:{app_port}",
        )
    )
    assert subprocess.run(["promtool", "check", "config", str(config)], capture_output=True).returncode == 0
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path}/data",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    threads: list[threading.Thread] = []

    def query(expr: str) -> list[dict[str, Any]]:
        answer = _get(api + "/query?" + urllib.parse.urlencode({"query": expr}))
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    try:
        for sidecar in sidecars:
            threads.append(threading.Thread(target=_traffic, args=(sidecar.url, stop), daemon=True))
            threads[-1].start()
        # Wait until both sidecars were scraped a few times with traffic in between, and the
        # dead endpoint was probed (its health panel shows 0, not "unprobed").
        deadline = time.monotonic() + 60
        while True:
            try:
                scraped = query("count_over_time(llm_sidecar_calls_in_flight[1m])")
                probed = query("llm_sidecar_endpoint_healthy == 0")  # only the dead endpoint fails its probes
            except OSError:
                scraped, probed = [], []
            if len(scraped) == 2 and min(float(r["value"][1]) for r in scraped) >= 8 and len(probed) == 2:
                break
            assert time.monotonic() < deadline, f"prometheus did not scrape both sidecars: {scraped}, {probed}"
            time.sleep(0.5)
        dashboard = load()
        empty, wrong = [], []
        for panel in panels(dashboard):
            for target in panel["targets"]:
                expr = (
                    target["expr"]
                    .replace("$__rate_interval", "15s")
                    .replace("$__range", "5m")
                    .replace("$model_group", ".*")
                    .replace("$pod", ".*")
                )
                result = query(expr)
                if not result:
                    empty.append(panel["title"])
                legend = re.findall(r"\{\{(\w+)\}\}", target.get("legendFormat", ""))
                shown = [tuple(r["metric"].get(label, "") for label in legend) for r in result]
                for label, meant in (
                    ("model_group", GROUPS),
                    ("upstream", UPSTREAMS),
                    ("endpoint", UPSTREAMS),
                    ("pod", PODS),
                ):
                    if label in legend:
                        values = {row[legend.index(label)] for row in shown}
                        if not values <= meant:
                            wrong.append(f"{panel['title']}: {{{{{label}}}}} shows {sorted(values)}")
                if "pod" in legend and sorted(row[legend.index("pod")] for row in shown) != sorted(PODS):
                    wrong.append(f"{panel['title']}: one series per sidecar expected, got {shown}")
        assert wrong == []
        assert empty == []
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                metric, label = re.match(r"label_values\((\w+), (\w+)\)", variable["query"]["query"]).groups()
                values = _get(f"{api}/label/{label}/values?" + urllib.parse.urlencode({"match[]": metric}))["data"]
                assert set(values) == {"pod": PODS, "model_group": GROUPS}[label], (variable["name"], values)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        prometheus.terminate()
        prometheus.wait(10)
        for sidecar in sidecars:
            sidecar.stop()
