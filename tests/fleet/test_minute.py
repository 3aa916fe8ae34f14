"""The minute-long check (``make fleet``, a CI step of its own): RPM held fleet-wide within 5 %, shared within 20 %."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.fleet.conftest import closed_loop, fleet_config, jain


@pytest.mark.long
async def test_four_sidecars_hold_the_fleet_rpm_within_five_percent_over_a_minute(
    mock_provider, redis, sidecar_processes
) -> None:
    rpm = 1200  # ~300 calls per sidecar: enough that a 20 % band measures the sharing, not chance
    config = fleet_config(mock_provider.url, redis.url, {"rpm": rpm}, queue_timeout=30)
    sidecars = sidecar_processes(config, 4)

    load = await closed_loop([s.url for s in sidecars], workers=2, seconds=62)

    with urllib.request.urlopen(f"{mock_provider.url}/_mock/stats?window=60") as response:
        busiest_minute = json.loads(response.read())["max_in_window"]["mock-gpt"]
    shares = [load.ok(i) for i in range(4)]
    print(f"busiest minute {busiest_minute} calls at rpm {rpm}; per sidecar {shares}, Jain's index {jain(shares):.4f}")
    assert load.failed() == 0, load.statuses
    assert 0.95 * rpm <= busiest_minute <= 1.05 * rpm
    assert max(shares) <= 1.2 * min(shares), shares
