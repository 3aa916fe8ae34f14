"""Waiting on a condition, and reading an endpoint's state from ``/status``."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.servers import Sidecar


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def endpoint_status(sidecar: Sidecar, endpoint: str) -> dict[str, Any]:
    """``GET /status`` on the admin port: the named endpoint's state."""
    with urllib.request.urlopen(sidecar.admin_url + "/status", timeout=10) as response:
        groups = json.loads(response.read())["groups"]
    return next(e for g in groups.values() for e in g["endpoints"] if e["name"] == endpoint)
