"""Zone-aware routing with the mock provider: three zones of replicas, the sidecar in zone-a.

Calls stay in the sidecar's zone while it has free slots, spill to the other zones at once
when its replicas are full or dead, and ``/status`` and ``/metrics`` say why each went where.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

import httpx

from proxy.kube.sidecar import TOPOLOGY_ENV
from proxy.router import selection
from tests.router.helpers import config, endpoint
from tests.servers import MockProvider, Sidecar
from tests.waiting import wait_until

ZONES = ("zone-a", "zone-a", "zone-b", "zone-b", "zone-c", "zone-c")


def zoned(mocks: list[MockProvider], **fields: Any) -> dict[str, Any]:
    """Six endpoints, two per zone, the first two in the sidecar's own zone."""
    return config(
        mocks[0],
        {
            "llama": {
                "endpoints": [
                    endpoint(m, f"{zone}-{i}", model="llama-3", zone=zone, **fields)
                    for i, (m, zone) in enumerate(zip(mocks, ZONES, strict=True))
                ]
            }
        },
        zone="zone-a",
    )


def status(sidecar: Sidecar) -> dict[str, dict[str, Any]]:
    groups = httpx.get(sidecar.admin_url + "/status").json()["groups"]
    return {e["name"]: e for e in groups["llama"]["endpoints"]}


def answer(sidecar: Sidecar, i: int) -> Any:
    """One call, on a client of its own (for a call made on its own thread)."""

    async def call() -> Any:
        async with sidecar.async_openai() as client:
            return await client.chat.completions.create(model="llama", messages=[{"role": "user", "content": f"#{i}"}])

    return call()


def answer_many(sidecar: Sidecar, count: int, concurrency: int, first: int = 0) -> list[Any]:
    """``count`` calls, ``concurrency`` at a time, on one client; answers or exceptions."""

    async def main() -> list[Any]:
        gate = asyncio.Semaphore(concurrency)
        async with sidecar.async_openai() as client:

            async def one(i: int) -> Any:
                async with gate:
                    messages = [{"role": "user", "content": f"#{i}"}]
                    return await client.chat.completions.create(model="llama", messages=messages)  # type: ignore[arg-type]

            return await asyncio.gather(*(one(first + i) for i in range(count)), return_exceptions=True)

    return asyncio.run(main())


def test_calls_stay_in_the_zone_while_it_has_capacity(
    make_sidecar: Callable[..., Sidecar], replicas: Callable[[int], list[MockProvider]]
) -> None:
    mocks = replicas(6)
    for mock in mocks:
        mock.set_behaviour("llama-3", latency_ms=20)
    sidecar = make_sidecar(config=zoned(mocks, max_concurrent=4))
    results = answer_many(sidecar, 120, concurrency=6)  # zone-a holds 8 at once
    assert not [r for r in results if isinstance(r, BaseException)]
    calls = [m.calls("llama-3") for m in mocks]
    same_zone = (calls[0] + calls[1]) / sum(calls)
    print(f"\ncalls per replica (zone-a, zone-a, zone-b, zone-b, zone-c, zone-c): {calls}; same zone {same_zone:.1%}")
    assert same_zone >= 0.95, calls
    assert min(calls[0], calls[1]) > 0  # both of the zone's replicas share the load
    shown = status(sidecar)
    assert shown["zone-a-0"]["locality"] == "same_zone" and shown["zone-b-2"]["locality"] == "elsewhere"
    assert sum(e["routed"]["same_zone"] for e in shown.values()) == sum(calls)
    metrics = httpx.get(sidecar.admin_url + "/metrics").text
    assert 'llm_sidecar_endpoint_routed_total{model_group="llama",reason="same_zone",upstream="zone-a-0"}' in metrics
    assert 'llm_sidecar_endpoint_zone_info{model_group="llama",upstream="zone-b-2",zone="zone-b"} 1.0' in metrics


def test_a_full_zone_spills_to_the_others_at_once(
    make_sidecar: Callable[..., Sidecar], replicas: Callable[[int], list[MockProvider]]
) -> None:
    mocks = replicas(6)
    sidecar = make_sidecar(config=zoned(mocks, max_concurrent=2))
    for mock in mocks[:2]:
        mock.set_behaviour("llama-3", latency_ms=2000)
    client = sidecar.openai()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        holding = [pool.submit(lambda i=i: asyncio.run(answer(sidecar, i))) for i in range(4)]
        wait_until(lambda: status(sidecar)["zone-a-0"]["in_flight"] + status(sidecar)["zone-a-1"]["in_flight"] == 4)
        saturated = time.monotonic()
        spilled = client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "spill"}])
        seen_by_client = time.monotonic() - saturated
        assert spilled.choices[0].message.content
        assert sum(m.calls("llama-3") for m in mocks[2:]) == 1
        # On the sidecar's own clock (the client's overhead on a loaded machine left out): the
        # spilled call, the only one ended so far, took under a second from its request to its
        # last byte, queue wait included.
        metrics = httpx.get(sidecar.admin_url + "/metrics").text
        within = 'llm_sidecar_call_duration_seconds_bucket{le="1.0",model_group="llama",outcome="upstream"} 1.0'
        assert within in metrics, [line for line in metrics.splitlines() if "call_duration_seconds_bucket" in line]
        print(f"\nspilled to another zone {seen_by_client * 1000:.0f} ms after the own zone was full (client's clock)")
        for call in holding:
            call.result(15)
    routed = {name: e["routed"] for name, e in status(sidecar).items()}
    assert sum(r["cross_zone"] for r in routed.values()) == 1
    assert sum(r["same_zone"] for r in routed.values()) == 4


def test_a_dead_replica_is_routed_around_in_the_zone_then_out_of_it(
    make_sidecar: Callable[..., Sidecar], replicas: Callable[[int], list[MockProvider]]
) -> None:
    mocks = replicas(6)
    sidecar = make_sidecar(config=zoned(mocks, max_concurrent=4))
    mocks[0].stop()  # one replica of the sidecar's zone dies
    results = answer_many(sidecar, 40, concurrency=3)
    assert not [r for r in results if isinstance(r, BaseException)]
    assert mocks[1].calls("llama-3") >= 38  # its zone's other replica; at most a fallback or two elsewhere
    mocks[1].stop()  # and then the other one
    results = answer_many(sidecar, 20, concurrency=3, first=100)
    assert not [r for r in results if isinstance(r, BaseException)]
    assert sum(m.calls("llama-3") for m in mocks[2:]) >= 20
    routed = {name: e["routed"] for name, e in status(sidecar).items()}
    assert sum(r["fallback"] + r["cross_zone"] for r in routed.values()) >= 20


def test_a_cooling_zone_spills_and_says_why(
    make_sidecar: Callable[..., Sidecar], replicas: Callable[[int], list[MockProvider]]
) -> None:
    mocks = replicas(6)
    sidecar = make_sidecar(config=zoned(mocks, max_concurrent=4))
    for mock in mocks[:2]:
        mock.set_behaviour("llama-3", status=429, retry_after=30)  # the own zone's replicas ask for rest
    results = answer_many(sidecar, 12, concurrency=1)
    assert not [r for r in results if isinstance(r, BaseException)]
    assert mocks[0].calls("llama-3") + mocks[1].calls("llama-3") <= 2  # each asked once, then rested
    routed = {name: e["routed"] for name, e in status(sidecar).items()}
    assert sum(r["fallback"] for r in routed.values()) <= 2
    assert sum(r["cross_zone"] for r in routed.values()) >= 10
    assert status(sidecar)["zone-a-0"]["cooldown_for_s"] > 0


def test_provider_endpoints_in_the_own_region_come_first(
    make_sidecar: Callable[..., Sidecar], replicas: Callable[[int], list[MockProvider]]
) -> None:
    far, near = replicas(2)
    group = {
        "endpoints": [
            endpoint(far, "us-east", model="llama-3", zone="us-east-1a", region="us-east-1"),
            endpoint(near, "eu-west", model="llama-3", zone="eu-west-1b", region="eu-west-1"),
        ]
    }
    sidecar = make_sidecar(config=config(far, {"llama": group}, zone="eu-west-1a", region="eu-west-1"))
    assert not [r for r in answer_many(sidecar, 6, concurrency=2) if isinstance(r, BaseException)]
    assert (near.calls("llama-3"), far.calls("llama-3")) == (6, 0)
    shown = status(sidecar)
    assert shown["eu-west"]["locality"] == "same_region" and shown["us-east"]["locality"] == "elsewhere"
    assert shown["eu-west"]["routed"]["cross_zone"] == 6  # another zone of the region


def test_locality_follows_zone_hints_then_region() -> None:
    place = selection.locality
    assert place("a", (), None, zone="a", region=None) == 0
    assert place("b", ("a",), None, zone="a", region=None) == 0  # hinted for the sidecar's zone
    assert place("a", ("b",), None, zone="a", region=None) == 2  # in the zone, hinted for another
    assert place("b", (), "r", zone="a", region="r") == 1
    assert place(None, (), None, zone="a", region="r") == 2  # unknown: after every known-near one
    assert place("b", (), "x", zone=None, region=None) == 0  # the sidecar's place unknown: no preference


def test_the_sidecar_takes_its_zone_from_the_environment_the_injector_sets(
    make_sidecar: Callable[..., Sidecar], replicas: Callable[[int], list[MockProvider]], monkeypatch: Any
) -> None:
    mocks = replicas(6)
    # The variables the injector sets from the pod's labels; a label the pod lacks gives "".
    labels = {"topology.kubernetes.io/zone": "zone-b", "topology.kubernetes.io/region": ""}
    for variable, label in TOPOLOGY_ENV.items():
        monkeypatch.setenv(variable, labels[label])
    settings = zoned(mocks)
    del settings["router"]["zone"]
    sidecar = make_sidecar(config=settings)
    shown = status(sidecar)
    assert shown["zone-b-2"]["locality"] == "same_zone" and shown["zone-a-0"]["locality"] == "elsewhere"
    assert not [r for r in answer_many(sidecar, 4, concurrency=2) if isinstance(r, BaseException)]
    assert mocks[2].calls("llama-3") + mocks[3].calls("llama-3") == 4
