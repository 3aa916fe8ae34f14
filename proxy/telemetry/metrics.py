"""Prometheus metrics: one registry per app, labels from a fixed set only.

Two kinds of numbers:

- per call, recorded once in ``Metrics.record(call)`` from the ``Call``'s fields
  (outcome, latency, attempts, tokens …): counters and histograms below;
- live state, read at scrape time by ``LiveCollector`` from the router's endpoints
  and the cache (in-flight, slots, health, circuit, cache size and counters), so
  the hot path pays nothing for them.

Label values come from the config (model group; the endpoint name as ``upstream``, since the
``endpoint`` label is the Prometheus Operator's, see docs/observability.md) or from closed sets
(outcome, status class, cache status, token type, error type, step); anything else
is counted as ``unknown`` / ``other``. Never a path, a prompt, a request id or a key.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from proxy.fleet.grants import REASONS as FLEET_REFUSALS
from proxy.telemetry.config import TelemetryConfig

if TYPE_CHECKING:
    from proxy.call import Call

PREFIX = "llm_sidecar"

#: seconds: LLM calls run from milliseconds (a cache hit) to minutes (a long stream)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
#: seconds: the sidecar's own work, queue waits and cache lookups
SHORT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
#: ``cancelled``: the client left before its answer ended (nginx's 499); not an error, so it
#: is neither in ``outcome="error"`` nor in the errors counter
OUTCOMES = frozenset({"cached", "coalesced", "upstream", "error", "cancelled"})
CACHE_STATUSES = frozenset({"hit", "miss", "coalesced", "bypass", "stale", "off"})
#: the timed steps of a call that ``observer.span`` reports
STEPS = frozenset({"cache.lookup", "cache.store", "coalesce.wait", "router.queue", "upstream.attempt", "relay"})
SAVED_OUTCOMES = frozenset({"cached", "coalesced"})


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "none"


def _error_types() -> frozenset[str]:
    from proxy.errors import CLIENT_STALLED, ProxyError

    found = {ProxyError.type, CLIENT_STALLED}
    pending = list(ProxyError.__subclasses__())
    while pending:
        cls = pending.pop()
        found.add(cls.type)
        pending.extend(cls.__subclasses__())
    return frozenset(found)


class _Value:
    """A counter's or a gauge's value for one label tuple."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class _Buckets:
    """A histogram for one label tuple: per-bucket counts (not cumulative) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # ``le`` is inclusive: the first bound >= value
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family:
    """A labelled counter, gauge or histogram kept as plain numbers per label tuple.

    prometheus_client's own metrics take a lock and validate labels on every update;
    the sidecar updates them from one event loop and scrapes from the same loop, so
    plain numbers do, and the work moves to scrape time (``export``).
    """

    __slots__ = ("name", "doc", "labels", "kind", "bounds", "children")

    def __init__(self, name: str, doc: str, labels: Iterable[str], kind: str, bounds: tuple[float, ...] = ()) -> None:
        self.name, self.doc, self.labels, self.kind, self.bounds = name, doc, list(labels), kind, bounds
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = _Buckets(self.bounds) if self.kind == HISTOGRAM else _Value()
        return child

    def export(self) -> Metric:
        if self.kind == HISTOGRAM:
            histogram = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
            names = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
            for values, child in list(self.children.items()):
                running = 0
                buckets = []
                for name, count in zip(names, child.counts):
                    running += count
                    buckets.append((name, running))
                histogram.add_metric(list(values), buckets, child.sum)
            return histogram
        cls = CounterMetricFamily if self.kind == COUNTER else GaugeMetricFamily
        family = cls(self.name, self.doc, labels=self.labels)
        for values, child in list(self.children.items()):
            family.add_metric(list(values), child.value)
        return family


class _Instruments(Collector):
    def __init__(self, families: list[_Family]) -> None:
        self.families = families

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.export()


_MAX_BUNDLES = 10_000


@dataclass(slots=True)
class _Bundle:
    group: str
    calls: _Value
    duration: _Buckets
    overhead: _Buckets
    ttfb: _Buckets
    cache_calls: _Value
    queue_wait: _Buckets
    #: spent upstream, or saved (cached and coalesced outcomes)
    input_tokens: _Value
    output_tokens: _Value
    cost: _Value
    prices: tuple[float, float]


class Metrics:
    """The per-call instruments; built once per app."""

    def __init__(self, config: TelemetryConfig, version: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.prices = {group: (p.input / 1e6, p.output / 1e6) for group, p in config.prices.items()}
        self.model_groups: Collection[str] = ()
        self.error_types = _error_types()
        self._bundles: dict[tuple[str, str, str, int, bool, str], _Bundle] = {}
        families: list[_Family] = []
        p = PREFIX

        def family(kind: str, name: str, doc: str, labels: Iterable[str], buckets: tuple[float, ...] = ()) -> _Family:
            created = _Family(f"{p}_{name}", doc, labels, kind, buckets)
            families.append(created)
            return created

        self.calls = family(
            COUNTER,
            "calls",
            "Calls by their one outcome (cached, coalesced, upstream, error, cancelled).",
            ("dialect", "model_group", "outcome", "status_class"),
        )
        self.errors = family(
            COUNTER, "call_errors", "Calls that ended in an error, by error type.", ("model_group", "error_type")
        )
        self.duration = family(
            HISTOGRAM,
            "call_duration_seconds",
            "Call duration, request read to last byte.",
            ("model_group", "outcome"),
            buckets=LATENCY_BUCKETS,
        )
        self.ttfb = family(
            HISTOGRAM,
            "time_to_first_byte_seconds",
            "Time from the request to the answer's first byte sent back (a stream's first token).",
            ("model_group", "stream"),
            buckets=LATENCY_BUCKETS,
        )
        self.overhead = family(
            HISTOGRAM,
            "overhead_seconds",
            "The sidecar's own time per call: duration minus time waiting on upstreams.",
            ("outcome",),
            buckets=SHORT_BUCKETS,
        )
        self.attempts = family(
            HISTOGRAM,
            "upstream_attempt_duration_seconds",
            "Upstream attempts by endpoint and status class (status_class none: no answer).",
            ("model_group", "upstream", "status_class"),
            buckets=LATENCY_BUCKETS,
        )
        self.queue_wait = family(
            HISTOGRAM,
            "queue_wait_seconds",
            "Time a call waited for an endpoint's concurrency slot.",
            ("model_group",),
            buckets=SHORT_BUCKETS,
        )
        self.retries = family(COUNTER, "retries", "Retries of an upstream attempt.", ("model_group",))
        self.fallbacks = family(
            COUNTER, "fallbacks", "Moves to the next endpoint after a failed attempt.", ("model_group",)
        )
        self.cache_calls = family(
            COUNTER,
            "cache_calls",
            "Calls by cache status (hit, miss, coalesced, bypass, stale, off).",
            ("model_group", "cache_status"),
        )
        self.tokens = family(
            COUNTER, "tokens", "Tokens spent upstream, read from the answers.", ("model_group", "type")
        )
        self.cost = family(
            COUNTER, "cost_usd", "Cost of the tokens spent upstream, from the configured prices.", ("model_group",)
        )
        self.saved_tokens = family(
            COUNTER,
            "cache_saved_tokens",
            "Tokens answered from the cache or a coalesced call instead of upstream.",
            ("model_group", "type"),
        )
        self.saved_cost = family(
            COUNTER,
            "cache_saved_cost_usd",
            "Cost saved by cache hits and coalescing, from the configured prices.",
            ("model_group",),
        )
        self.steps = family(
            HISTOGRAM,
            "step_duration_seconds",
            "Timed steps of a call: cache lookup, queue wait, upstream attempt …",
            ("step",),
            buckets=SHORT_BUCKETS + (60, 120, 300, 600),
        )
        self.events = family(
            COUNTER,
            "call_events",
            "Moments of calls reported by the router and the cache (fallback, retry, cooldown …).",
            ("event",),
        )
        self.in_flight = family(GAUGE, "calls_in_flight", "Calls being handled now.", ())()
        self.reloads = family(
            COUNTER,
            "config_reloads",
            "Config reloads: applied (ok) or rejected (error: the running config kept).",
            ("result",),
        )
        for result in ("ok", "error"):
            self.reloads(result)
        family(GAUGE, "build_info", "The running version (always 1).", ("version",))(version).inc()
        r = self.registry
        r.register(_Instruments(families))
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def bind(self, model_groups: Collection[str]) -> None:
        self.model_groups = frozenset(model_groups)
        self._bundles.clear()  # a reload may add or drop groups: label them afresh
        # Counters a dashboard sums start at 0 for every configured group, so a series
        # exists (and ``rate``/``increase`` work) before the first event of its kind.
        for group in self.model_groups:
            for family in (self.retries, self.fallbacks, self.cost, self.saved_cost):
                family(group)
            for kind in ("input", "output"):
                self.tokens(group, kind)
                self.saved_tokens(group, kind)

    def start(self) -> None:
        """A call starts."""
        self.in_flight.value += 1.0

    def _bundle(self, key: tuple[str, str, str, int, bool, str]) -> _Bundle:
        """The children one kind of call updates, found once; labels are made bounded here."""
        dialect, group, outcome, status, stream, cache_status = key
        group = group if group in self.model_groups else "unknown"
        outcome = outcome if outcome in OUTCOMES else "error"
        cache_status = cache_status if cache_status in CACHE_STATUSES else "off"
        saved = outcome in SAVED_OUTCOMES
        if len(self._bundles) > _MAX_BUNDLES:  # only reachable if a step stored unbounded values
            self._bundles.clear()
        bundle = self._bundles[key] = _Bundle(
            group,
            self.calls(dialect, group, outcome, status_class(status)),
            self.duration(group, outcome),
            self.overhead(outcome),
            self.ttfb(group, "true" if stream else "false"),
            self.cache_calls(group, cache_status),
            self.queue_wait(group),
            (self.saved_tokens if saved else self.tokens)(group, "input"),
            (self.saved_tokens if saved else self.tokens)(group, "output"),
            (self.saved_cost if saved else self.cost)(group),
            self.prices.get(group, (0.0, 0.0)),
        )
        return bundle

    def record(self, call: Call, now: float) -> None:
        """A call ended: everything it did, from its fields."""
        # The hot path of every call: counters are added to in place (no ``inc`` call each).
        self.in_flight.value -= 1.0
        key = (call.dialect.name, call.model_group, call.outcome, call.status, call.stream, call.cache_status)
        bundle = self._bundles.get(key) or self._bundle(key)
        latency = now - call.started
        upstream = call.upstream_seconds
        bundle.calls.value += 1.0
        bundle.duration.observe(latency)
        bundle.overhead.observe(latency - upstream if latency > upstream else 0.0)
        bundle.cache_calls.value += 1.0
        if call.first_byte_at is not None:
            bundle.ttfb.observe(call.first_byte_at - call.started)
        if call.attempts or call.queue_wait:  # a wait that got no slot (it timed out, its client left) too
            bundle.queue_wait.observe(call.queue_wait)
        if call.attempts:
            group = bundle.group
            for endpoint, status, seconds, _error in call.attempt_log:
                self.attempts(group, endpoint, status_class(status)).observe(seconds)
            if call.retries:
                self.retries(group).inc(call.retries)
            if call.fallbacks:
                self.fallbacks(group).inc(call.fallbacks)
        if call.error_type is not None:
            error = call.error_type if call.error_type in self.error_types else "other"
            self.errors(bundle.group, error).inc()
        usage = call.usage
        if usage:
            spent_in = usage.get("input_tokens", 0)
            spent_out = usage.get("output_tokens", 0)
            bundle.input_tokens.value += spent_in
            bundle.output_tokens.value += spent_out
            price_in, price_out = bundle.prices
            bundle.cost.value += spent_in * price_in + spent_out * price_out

    def step(self, name: str, seconds: float) -> None:
        self.step_buckets(name).observe(seconds)

    def step_buckets(self, name: str) -> _Buckets:
        """The step histogram's child for ``name`` (``other`` when it is not a known step)."""
        child: _Buckets = self.steps(name if name in STEPS else "other")
        return child

    def event(self, name: str) -> None:
        self.events(name if name in EVENTS else "other").inc()


class NullMetrics:
    """Metrics off: the same calls, doing nothing."""

    def start(self) -> None:
        pass

    def record(self, call: Call, now: float) -> None:
        pass


#: the point-in-time moments that ``observer.event`` reports
EVENTS = frozenset(
    {
        "fallback",
        "retry",
        "cooldown",
        "circuit_open",
        "circuit_close",
        "coalesce.join",
        "cache.error",
        "stream.error",
        "client.disconnect",
    }
)


class LiveCollector(Collector):
    """Reads the router's endpoints and the cache when Prometheus scrapes."""

    def __init__(self, router: Any, cache: Any) -> None:
        self.router = router
        self.cache = cache

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._endpoints()
        yield from self._cache()
        yield from self._fleet()

    def _endpoints(self) -> Iterator[Metric]:
        """From the router's ``Endpoint`` objects (``proxy/router/endpoint.py``)."""
        p = PREFIX
        labels = ["model_group", "upstream"]
        in_flight = GaugeMetricFamily(
            f"{p}_endpoint_in_flight", "Upstream attempts in flight (slots in use).", labels=labels
        )
        slots = GaugeMetricFamily(f"{p}_endpoint_slots", "Concurrency slots (max_concurrent).", labels=labels)
        healthy = GaugeMetricFamily(
            f"{p}_endpoint_healthy",
            "Active probes' verdict: 1 healthy, 0 unhealthy, -1 not probed (yet).",
            labels=labels,
        )
        usable = GaugeMetricFamily(
            f"{p}_endpoint_usable",
            "1 when the endpoint may take a call now (not cooling down, circuit allowing, not unhealthy).",
            labels=labels,
        )
        circuit = GaugeMetricFamily(
            f"{p}_endpoint_circuit_state", "Circuit breaker state: 1 for the current one.", labels=[*labels, "state"]
        )
        opened = CounterMetricFamily(f"{p}_endpoint_circuit_opened", "Times the circuit opened.", labels=labels)
        cooldown = GaugeMetricFamily(
            f"{p}_endpoint_cooldown_seconds",
            "Seconds left of a cool-down (Retry-After or rate-limit reset).",
            labels=labels,
        )
        ttfb = GaugeMetricFamily(
            f"{p}_endpoint_ttfb_estimate_seconds",
            "The router's moving estimate of time to first byte, used to balance.",
            labels=labels,
        )
        key_missing = GaugeMetricFamily(
            f"{p}_endpoint_key_missing",
            "1 when the key the config names (a variable or file) is missing: the endpoint's calls get an error.",
            labels=labels,
        )
        routed = CounterMetricFamily(
            f"{p}_endpoint_routed",
            "Calls the endpoint answered, by why they went there: same_zone, cross_zone (the own zone "
            "had no free usable endpoint), fallback (after a failure, or a fallback group), unzoned.",
            labels=[*labels, "reason"],
        )
        zone = GaugeMetricFamily(
            f"{p}_endpoint_zone_info",
            "1 per endpoint whose zone is known (from its EndpointSlice or its config).",
            labels=[*labels, "zone"],
        )
        now = time.monotonic()
        for endpoint in self.router.endpoints():
            key = [endpoint.group, endpoint.name]
            for reason, count in endpoint.routed.items():
                routed.add_metric([*key, reason], count)
            if endpoint.config.zone is not None:
                zone.add_metric([*key, endpoint.config.zone], 1.0)
            in_flight.add_metric(key, endpoint.in_flight)
            slots.add_metric(key, endpoint.config.max_concurrent)
            healthy.add_metric(key, _HEALTH[endpoint.healthy])
            usable.add_metric(key, 1.0 if endpoint.config.missing_key is None and endpoint.usable(now) else 0.0)
            state = endpoint.circuit.state
            if state == "open" and now >= endpoint.circuit.open_until:
                state = "half_open"  # the next call is the trial
            for name in _CIRCUIT_STATES:
                circuit.add_metric([*key, name], 1.0 if state == name else 0.0)
            opened.add_metric(key, endpoint.circuit.times_opened)
            cooldown.add_metric(key, max(endpoint.cooldown_until - now, 0.0))
            ttfb.add_metric(key, endpoint.ttfb_estimate(now))
            key_missing.add_metric(key, 0.0 if endpoint.config.missing_key is None else 1.0)
        yield from (in_flight, slots, healthy, usable, circuit, opened, cooldown, ttfb, key_missing, routed, zone)

    def _cache(self) -> Iterator[Metric]:
        """From ``ResponseCache.snapshot()``: the cache's own counters and its backend's size."""
        snapshot = getattr(self.cache, "snapshot", None)
        if snapshot is None:  # no cache configured
            return
        stats = snapshot()
        p = PREFIX
        events = CounterMetricFamily(
            f"{p}_cache_events",
            "What the cache did: hit, miss, coalesced, stale (served on upstream error), "
            "bypass, store, not_stored, corrupt, store_failed (the backend did not take it).",
            labels=["event"],
        )
        for event, key in _CACHE_EVENTS:
            events.add_metric([event], stats.get(key, 0))
        yield events
        yield CounterMetricFamily(
            f"{p}_cache_errors",
            "Cache backend errors and operations skipped while "
            "Redis is down (each a miss or an answer not stored, never a failed call), and "
            "unreadable entries.",
            value=stats.get("errors", 0),
        )
        yield CounterMetricFamily(
            f"{p}_cache_redis_errors",
            "Redis operations that failed or timed out.",
            value=getattr(getattr(self.cache, "backend", None), "errors", 0),
        )
        yield CounterMetricFamily(f"{p}_cache_lookups", "Cache lookups (backend reads).", value=stats.get("lookups", 0))
        yield CounterMetricFamily(
            f"{p}_cache_local_hits",
            "Hits answered by the in-process tier in front of Redis without a round trip (also counted as hit).",
            value=stats.get("local_hits", 0),
        )
        yield CounterMetricFamily(
            f"{p}_cache_lookup_seconds", "Time spent in cache lookups, summed.", value=stats.get("lookup_seconds", 0.0)
        )
        yield GaugeMetricFamily(
            f"{p}_cache_available",
            "1 while the backend is usable (Redis breaker closed).",
            value=1.0 if stats.get("available", True) else 0.0,
        )
        yield GaugeMetricFamily(
            f"{p}_cache_flights",
            "Calls in flight that identical calls can join (coalescing).",
            value=stats.get("in_flight", 0),
        )
        if stats.get("entries") is not None:
            yield GaugeMetricFamily(f"{p}_cache_entries", "Entries in the memory cache.", value=stats["entries"])
        if stats.get("bytes") is not None:
            yield GaugeMetricFamily(f"{p}_cache_bytes", "Bytes held by the memory cache.", value=stats["bytes"])

    def _fleet(self) -> Iterator[Metric]:
        """From ``Fleet.snapshot()`` (``proxy/fleet``): the budgets shared with the other sidecars."""
        fleet = getattr(self.router, "fleet", None)
        if fleet is None:
            return
        p = PREFIX
        state = fleet.snapshot()
        yield GaugeMetricFamily(
            f"{p}_fleet_fail_open",
            "1 while Redis is unreachable and each fleet budget falls back to its local share.",
            value=1.0 if state["fail_open"] else 0.0,
        )
        yield GaugeMetricFamily(
            f"{p}_fleet_live_sidecars",
            "Sidecars sharing the fleet budgets, as last seen.",
            value=state["live_sidecars"],
        )
        labels = ["budget"]
        limit = GaugeMetricFamily(f"{p}_fleet_limit", "A fleet budget's limit.", labels=[*labels, "kind"])
        in_use = GaugeMetricFamily(
            f"{p}_fleet_leases_in_use", "Concurrency leases in use fleet-wide (as last seen).", labels=labels
        )
        left = GaugeMetricFamily(
            f"{p}_fleet_leases_left", "Concurrency leases left fleet-wide (as last seen).", labels=labels
        )
        held = GaugeMetricFamily(
            f"{p}_fleet_leases_held", "Leases (or local shares) this sidecar holds.", labels=labels
        )
        granted = CounterMetricFamily(f"{p}_fleet_grants", "Calls granted fleet budget.", labels=labels)
        denied = CounterMetricFamily(
            f"{p}_fleet_denials",
            "Tries refused fleet budget: concurrency, rate (rpm/tpm) or cooling (a shared cool-down).",
            labels=[*labels, "reason"],
        )
        waits = CounterMetricFamily(f"{p}_fleet_waits", "Calls that queued for fleet budget.", labels=labels)
        waited = CounterMetricFamily(
            f"{p}_fleet_wait_seconds", "Time calls spent queued for fleet budget, summed.", labels=labels
        )
        expired = CounterMetricFamily(
            f"{p}_fleet_lease_expiries",
            "Leases found expired and freed (their sidecar died or stalled past the lease TTL).",
            labels=labels,
        )
        restored = CounterMetricFamily(
            f"{p}_fleet_leases_restored",
            "Leases of this sidecar put back in Redis: lost in a restart, or given from the local share.",
            labels=labels,
        )
        cooled = CounterMetricFamily(
            f"{p}_fleet_cooldowns_published", "Cool-downs this sidecar told the fleet about.", labels=labels
        )
        for budget in state["budgets"]:
            key = [budget["key"]]
            for kind in ("max_concurrent", "rpm", "tpm"):
                if budget[kind] is not None:
                    limit.add_metric([*key, kind], budget[kind])
            if budget["max_concurrent"] is not None:
                in_use.add_metric(key, budget["leases_in_use"])
                left.add_metric(key, max(0, budget["max_concurrent"] - budget["leases_in_use"]))
            held.add_metric(key, budget["leases_held"])
            granted.add_metric(key, budget["granted"])
            for reason in FLEET_REFUSALS:
                denied.add_metric([*key, reason], budget["denied"].get(reason, 0))
            waits.add_metric(key, budget["waits"])
            waited.add_metric(key, budget["wait_seconds"])
            expired.add_metric(key, budget["lease_expiries"])
            restored.add_metric(key, budget["leases_restored"])
            cooled.add_metric(key, budget["cooldowns_published"])
        yield from (limit, in_use, left, held, granted, denied, waits, waited, expired, restored, cooled)


_HEALTH = {True: 1.0, False: 0.0, None: -1.0}
_CIRCUIT_STATES = ("closed", "open", "half_open")
_CACHE_EVENTS = (
    ("hit", "hits"),
    ("miss", "misses"),
    ("coalesced", "coalesced"),
    ("stale", "stale"),
    ("bypass", "bypass"),
    ("store", "stores"),
    ("not_stored", "not_stored"),
    ("corrupt", "corrupt"),
    ("store_failed", "store_failures"),
)
