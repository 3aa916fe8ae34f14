"""Helpers for the telemetry tests: scrape a sidecar's ``/metrics`` with a real parser."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import Sidecar


def exposition(sidecar: Sidecar) -> tuple[str, str]:
    """The ``/metrics`` body and its content type."""
    with urllib.request.urlopen(sidecar.admin_url + "/metrics", timeout=10) as response:
        return response.read().decode(), response.headers["Content-Type"]


class Scrape:
    """One parsed scrape: ``value(name, **labels)`` sums the samples that match."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.samples = [s for f in self.families for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        return sum(
            s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def names(self) -> set[str]:
        """Every metric and sample name exposed (``foo``, ``foo_total``, ``foo_bucket`` …)."""
        return {f.name for f in self.families} | {s.name for s in self.samples}


@pytest.fixture
def scrape() -> Callable[[Sidecar], Scrape]:
    return lambda sidecar: Scrape(exposition(sidecar)[0])
