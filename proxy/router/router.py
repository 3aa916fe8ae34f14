"""``Router``: picks an endpoint for a call, holds its slot, falls back and retries.

``route(call)`` is the pipeline's seam. Everything that may move a call to
another endpoint happens before it yields: once it yields, the relay may send
the first byte to the client, and from then on a failure can only end the
stream (the relay writes an error event). That is why fallback lives here and
not around the relay.

An *attempt* is one try at one endpoint, and only that: each has its span
(``upstream.attempt``), its line in ``call.attempt_log``, a count in
``call.attempts`` and the endpoint's ``attempts``, and an observation in the
``upstream_attempt_duration_seconds`` histogram. A call makes up to
``max_attempts`` of them, in order:
1. ``selection.order``: usable endpoints of the group and its fallback groups,
   untried before tried (fallback before retry); re-trying one waits a backoff.
2. A free slot (``max_concurrent``) on the best endpoint that has one; when all are
   full, wait up to ``queue_timeout`` for the first to free, then 429 ``Overloaded``.
   An endpoint with fleet limits (``proxy/fleet``) also needs its fleet budget: the first
   endpoint that has it wins (so a call falls back to one with budget); when none has, the
   call waits for the best one's budget within ``queue_timeout``, then 429 ``Overloaded``
   with the ``Retry-After`` the budget gave. A cool-down another sidecar published
   counts as this endpoint's own.
3. ``Upstream.open``, translated when the endpoint speaks the other dialect.
4. Failure: record it (circuit, cool-down), then fall back if ``retry_on`` allows,
   within ``max_attempts`` and the ``deadline``. Other 4xx go back as they came.
   An endpoint that timed out is not tried again in the same call: it already cost
   a full timeout, and a second wait there would double the caller's.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Collection, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

import orjson

from proxy.auth import upstream_headers
from proxy.call import Call
from proxy.dialects.translate import Translation, Untranslatable, target_path
from proxy.discovery.sources import Address
from proxy.errors import (
    BadRequest,
    MissingKey,
    NoEndpointAvailable,
    Overloaded,
    ProxyError,
    UpstreamBroken,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
)
from proxy.fleet.grants import Denial, Grant
from proxy.router import selection
from proxy.router.config import RetryOn, RouterConfig, RoutingConfig
from proxy.router.cooldown import requested_rest
from proxy.router.endpoint import Endpoint
from proxy.router.translated import TranslatedResponse
from proxy.telemetry.logs import event
from proxy.upstream import Answer, Upstream

if TYPE_CHECKING:
    from proxy.fleet.budget import Fleet

#: a call may name its preferred endpoint or model group; never forwarded upstream
PREFER_HEADER = "x-llm-sidecar-prefer"

Plan = tuple[list[Endpoint], dict[str, int]]


def failure_kind(error: UpstreamError) -> RetryOn | None:
    """The ``retry_on`` word for a failure; None for a 4xx other than 429 (the call is wrong)."""
    if isinstance(error, UpstreamStatus):
        if error.status == 429:
            return "429"
        return "5xx" if error.status >= 500 else None
    if not error.retryable:
        return None  # the sidecar is stopping: no endpoint can help
    if isinstance(error, UpstreamConnectError):
        return "connect"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    return "broken"


class Router:
    """The model groups' endpoints and the policy that routes calls among them."""

    def __init__(
        self, config: RoutingConfig, upstream: Upstream, *, fleet: Fleet | None = None, rng: random.Random | None = None
    ) -> None:
        self.upstream = upstream
        #: the budgets shared with the other sidecars (``None``: no shared Redis)
        self.fleet = fleet
        self.settings: RouterConfig = config.router
        self.routes = config.model_groups
        self.groups: dict[str, list[Endpoint]] = {
            name: [self._placed(Endpoint(e, name, self.settings.circuit)) for e in route.endpoints]
            for name, route in self.routes.items()
        }
        self._rng = rng or random.Random()
        # (group, caller dialect, operation path) -> plan; filled once per combination.
        self._plans: dict[tuple[str, str, str], Plan] = {}
        #: discovered endpoints that went away with calls still on them (shown until those end)
        self.draining: list[Endpoint] = []

    def adopt(self, previous: Router) -> None:
        """Keep the live state of endpoints a config reload did not change.

        Their slots in use, cool-downs, circuits and health carry over, so a reload neither
        doubles an upstream's concurrency nor forgets that it asked for rest.
        """
        if previous.settings != self.settings:
            return
        for group, endpoints in self.groups.items():
            kept = {e.name: e for e in previous.groups.get(group, ())}
            self.groups[group] = [
                kept[e.name] if e.name in kept and kept[e.name].config == e.config else e for e in endpoints
            ]
            # Discovered endpoints stay until discovery says otherwise (it re-lists for the new router).
            discover = self.routes[group].discover
            if discover is not None and group in previous.routes and previous.routes[group].discover == discover:
                self.groups[group] += _discovered(previous.groups[group], discover.name)

    def discovered(self, group: str, addresses: Collection[Address]) -> tuple[list[Endpoint], list[Endpoint]]:
        """Make ``addresses`` the group's discovered endpoints: ``(added, gone)``.

        An address already known keeps its endpoint (slots, health, history); one that
        went away is marked gone: its calls in flight finish, new calls skip it.
        """
        discover = self.routes[group].discover
        assert discover is not None
        template, region = discover.endpoint, self.settings.region
        wanted = {
            template.at(a.host, a.port, discover.scheme, discover.path, a.zone, region): a.for_zones for a in addresses
        }
        current = self.groups[group]
        old = {e.name: e for e in _discovered(current, template.name)}
        kept = [e for e in old.values() if e.config in wanted and e.for_zones == wanted[e.config]]
        known = {e.config for e in kept}
        added = [
            self._placed(Endpoint(c, group, self.settings.circuit, label=template.name, for_zones=zones))
            for c, zones in wanted.items()
            if c not in known
        ]
        gone = [e for e in old.values() if e not in kept]
        for endpoint in gone:
            endpoint.gone = True
        self.draining = [e for e in (*self.draining, *gone) if e.in_flight]
        self.groups[group] = [e for e in current if e not in gone] + added
        self._plans.clear()  # rebuilt with the new endpoints by the next call of each kind
        return added, gone

    def _placed(self, endpoint: Endpoint) -> Endpoint:
        config, settings = endpoint.config, self.settings
        endpoint.locality = selection.locality(
            config.zone, endpoint.for_zones, config.region, zone=settings.zone, region=settings.region
        )
        limits = config.fleet
        if limits is not None and self.fleet is not None:
            # Discovered endpoints share their template's budget: the limit is the service's.
            endpoint.budget = self.fleet.budget(limits.key or f"{endpoint.group}/{endpoint.label}", limits)
        return endpoint

    # ------------------------------------------------------------------ reading

    def endpoints(self) -> Iterator[Endpoint]:
        """Every endpoint's live state, for probes, ``/status`` and a metrics collector."""
        for endpoints in self.groups.values():
            yield from endpoints

    def group_order(self, group: str) -> list[str]:
        """The group, then its fallback groups, breadth first, each once."""
        order = [group]
        for name in order:
            order.extend(f for f in self.routes[name].fallbacks if f not in order)
        return order

    def ready(self) -> dict[str, bool]:
        """Per model group: whether some endpoint of it or of its fallbacks could take a call.

        A cooling endpoint counts as usable here: a rate limit is seconds long, and
        taking the pod out of service for it would hurt more than it helps.
        """
        now = time.monotonic()
        ready = {}
        for group in self.groups:
            ready[group] = any(
                e.config.missing_key is None and e.healthy is not False and e.circuit.allows(now)
                for name in self.group_order(group)
                for e in self.groups[name]
            )
        return ready

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        ready = self.ready()
        return {
            "groups": {
                name: {
                    "ready": ready[name],
                    "fallbacks": list(self.routes[name].fallbacks),
                    "prefer": self.routes[name].prefer,
                    "endpoints": [e.snapshot(now) for e in endpoints]
                    + [e.snapshot(now) for e in self.draining if e.group == name and e.in_flight],
                }
                for name, endpoints in self.groups.items()
            },
            **({"fleet": self.fleet.snapshot()} if self.fleet is not None else {}),
        }

    # ------------------------------------------------------------------ the seam

    def route(self, call: Call) -> Routed:
        """``async with router.route(call) as upstream``: an open upstream answer (after as many
        attempts as it took); its endpoint's slot is held until the block ends.

        Raises ``UpstreamError`` (the last attempt's failure), ``Overloaded`` (every
        candidate full past the queue timeout, or cooling down) or
        ``NoEndpointAvailable`` (every candidate unhealthy or its circuit open).
        """
        return Routed(self, call)

    # ------------------------------------------------------------------ internals

    def _plan(self, call: Call) -> Plan:
        key = (call.model_group, call.dialect.name, call.operation.path)
        plan = self._plans.get(key)
        if plan is None:
            groups = self.group_order(call.model_group)
            serving = [
                e
                for g in groups
                for e in self.groups[g]
                if target_path(call.dialect.name, call.operation.path, e.config.dialect or "openai") is not None
            ]
            # An endpoint without its key is never tried (it would send the call unauthenticated).
            endpoints = [e for e in serving if e.config.missing_key is None]
            if serving and not endpoints:
                reasons = sorted({e.config.missing_key.partition(": ")[2] for e in serving if e.config.missing_key})
                raise MissingKey(
                    f"the sidecar has no provider key for model group `{call.model_group}`: {'; '.join(reasons)}"
                )
            plan = self._plans[key] = (endpoints, {g: i for i, g in enumerate(groups)})
        return plan

    async def _open(self, routed: Routed) -> Answer:
        """``routed``'s attempts, until one opens an answer; fills in its endpoint, answer and times."""
        call, settings = routed.call, self.settings
        endpoints, rank = self._plan(call)
        if not endpoints and self.routes[call.model_group].discover is not None:
            raise NoEndpointAvailable(f"model group `{call.model_group}` has no discovered endpoint ready")
        if not endpoints:
            raise BadRequest(
                f"model group `{call.model_group}` has no endpoint that serves "
                f"{call.dialect.name} {call.operation.path}"
            )
        route = self.routes[call.model_group]
        prefer = call.request.headers.get(PREFER_HEADER) or route.prefer
        deadline = time.monotonic() + settings.deadline
        tried: list[Endpoint] = []
        spent: set[Endpoint] = set()  # timed out in this call: never re-tried
        last_error: UpstreamError | None = None
        for number in range(1, settings.max_attempts + 1):
            endpoint = await self._take_slot(call, endpoints, rank, prefer, tried, spent, deadline, last_error)
            try:
                request = self._request(call, endpoint)
            except Untranslatable:
                # Refused before the endpoint is called: the caller's 400, unless an endpoint
                # already failed, whose error (maybe transient) is then the truer answer.
                self._free(call, endpoint, failed=True)
                if last_error is None:
                    raise
                spent.add(endpoint)
                continue
            except BaseException:
                self._free(call, endpoint, failed=True)
                raise
            now = time.monotonic()
            if tried:
                if endpoint in tried:
                    call.retries += 1
                    call.observer.event("retry", endpoint=endpoint.name, attempt=number)
                else:
                    call.fallbacks += 1
                    call.observer.event(
                        "fallback",
                        endpoint=endpoint.name,
                        previous=tried[-1].name,
                        reason=last_error.type if last_error else None,
                    )
            trial = endpoint.circuit.begin(now)
            endpoint.attempts += 1
            call.attempts += 1
            call.endpoint = endpoint.name
            started = time.perf_counter()
            try:
                response = await self._try(call, endpoint, number, deadline - now, request)
            except UpstreamError as error:
                self._free(call, endpoint, failed=True)
                seconds = time.perf_counter() - started
                call.upstream_seconds += seconds
                status = error.status if isinstance(error, UpstreamStatus) else 0
                call.attempt_log.append((endpoint.label, status, seconds, error.type))
                self._record_failure(call, endpoint, error, time.monotonic())
                kind = failure_kind(error)
                if kind is None or kind not in settings.retry_on:
                    raise
                last_error = error
                tried.append(endpoint)
                if kind == "timeout":
                    spent.add(endpoint)
                continue
            except BaseException:
                # Cancelled (the client left) or a bug: free the slot, and the trial if it was one.
                self._free(call, endpoint, failed=True)
                if trial:
                    endpoint.circuit.abandon()
                raise
            answered = time.perf_counter()
            seconds = answered - started
            call.attempt_log.append((endpoint.label, response.status, seconds, None))
            now = time.monotonic()
            endpoint.observe_ttfb(seconds, now)
            if endpoint.circuit.success(now) is not None:
                self._circuit_event(call, endpoint)
            endpoint.routed[selection.reason(endpoint, call.model_group, call.fallbacks > 0, settings.zone)] += 1
            routed.endpoint, routed.response, routed.started, routed.answered = endpoint, response, started, answered
            return response
        assert last_error is not None
        raise last_error

    @staticmethod
    def _free(call: Call, endpoint: Endpoint, failed: bool) -> None:
        """The attempt is over: its slot, and its fleet grant (settled to the call's usage)."""
        endpoint.release()
        grant = call.fleet_grant
        if grant is not None:
            call.fleet_grant = None
            grant.budget.release(grant, call.usage, failed)

    @staticmethod
    def _request(call: Call, endpoint: Endpoint) -> tuple[str, bytes, Translation | None]:
        """The URL and body for ``endpoint``, and the translation when it speaks the other dialect."""
        config = endpoint.config
        if config.dialect == call.dialect.name:
            same_model = endpoint.upstream_model == call.payload.get("model")
            body = call.body if same_model else orjson.dumps({**call.payload, "model": endpoint.upstream_model})
            return config.url + call.operation.path, body, None
        path = target_path(call.dialect.name, call.operation.path, config.dialect or "openai")
        assert path is not None  # the plan holds only endpoints that translate
        translation = Translation(call.dialect.name, config.dialect or "openai", path)
        return config.url + path, translation.request(call.payload, endpoint.upstream_model), translation

    async def _try(
        self,
        call: Call,
        endpoint: Endpoint,
        number: int,
        remaining: float,
        request: tuple[str, bytes, Translation | None],
    ) -> Answer:
        config = endpoint.config
        timeouts = config.timeouts
        if remaining <= 0:
            raise UpstreamTimeout("the call's routing deadline passed")
        if remaining < timeouts.first_byte:
            timeouts = timeouts.model_copy(update={"first_byte": remaining})
        url, body, translation = request
        headers = upstream_headers(call, config)
        with call.observer.span(
            "upstream.attempt",
            endpoint=endpoint.name,
            model_group=endpoint.group,
            attempt=number,
            dialect=config.dialect,
        ):
            call.observer.inject(headers)
            try:
                response = await self.upstream.open(url, headers, body, timeouts, config.max_answer_bytes)
            except UpstreamStatus as error:
                if translation is None:
                    raise
                raise UpstreamStatus(error.status, translation.error(error.body), error.headers) from None
            if response.is_stream != call.stream:
                # An upstream that ignores ``stream`` (a gateway, a server): relayed, a streaming
                # SDK would see a stream end with no frame and no error, a JSON one event-stream text.
                response.close()
                asked, came = ("a stream", "JSON") if call.stream else ("JSON", "a stream")
                raise UpstreamBroken(f"upstream answered {came} to a call that asked for {asked}")
            if translation is None:
                return response
            try:
                return TranslatedResponse(response, translation, call.payload)
            except UpstreamError:
                response.close()
                raise

    async def _take_slot(
        self,
        call: Call,
        endpoints: list[Endpoint],
        rank: dict[str, int],
        prefer: str | None,
        tried: list[Endpoint],
        spent: set[Endpoint],
        deadline: float,
        last_error: UpstreamError | None,
    ) -> Endpoint:
        """A usable endpoint with one of its slots taken; waits in the queue when all are full."""
        settings = self.settings
        balance = self.routes[call.model_group].balance
        while True:
            now = time.monotonic()
            if len(endpoints) == 1 and balance != "weighted":
                # One endpoint (the common group): nothing to rank, not even a call to order (~3,000
                # instructions with its keywords); a weighted draw still takes its number.
                ranked = endpoints if endpoints[0].usable(now) else []  # read, never changed
            else:
                ranked = selection.order(
                    endpoints, prefer=prefer, balance=balance, group_rank=rank, now=now, tried=tried, rng=self._rng
                )
            if spent:
                ranked = [e for e in ranked if e not in spent]
            if not ranked:
                raise self._nothing_usable(call, endpoints, now, last_error)
            if tried and ranked[0] in tried:
                # Nothing new to fall back to: this is a retry, so back off first (full jitter).
                cap = min(settings.backoff.max, settings.backoff.base * 2 ** (len(tried) - 1))
                delay = min(self._rng.uniform(0, cap), max(0.0, deadline - now))
                if delay > 0:
                    await asyncio.sleep(delay)
                    now = time.monotonic()
                    ranked = [e for e in ranked if e.usable(now)]
                    if not ranked:
                        continue
            denied: list[tuple[Endpoint, Denial]] = []
            cooled = False
            for endpoint in ranked:
                if endpoint.take_slot():
                    if endpoint.budget is None:
                        return endpoint
                    answer = await endpoint.budget.take(call.payload, call.body, now)  # no wait: try the next
                    if isinstance(answer, Grant):
                        call.fleet_grant = answer
                        return endpoint
                    endpoint.release()
                    if answer.reason == "cooling":
                        endpoint.cool_down(answer.wait, time.monotonic())
                        cooled = True
                    else:
                        denied.append((endpoint, answer))
            if denied:
                return await self._wait_for_budget(call, denied, deadline, last_error)
            if cooled:
                continue  # ranked again without it
            wait = min(settings.queue_timeout, deadline - now)
            until = now + wait
            started = time.perf_counter()
            try:
                with call.observer.span("router.queue", model_group=call.model_group):
                    freed = await _first_free(ranked, wait) if wait > 0 else None
            finally:  # a wait its client ended by leaving was a wait too
                call.queue_wait += time.perf_counter() - started
            if freed is None:
                if last_error is not None:
                    raise last_error
                raise Overloaded(
                    f"every endpoint of model group `{call.model_group}` is at its concurrency limit",
                    retry_after=max(1.0, settings.queue_timeout),
                )
            if freed.usable(time.monotonic()):
                return await self._with_budget(call, freed, until, last_error)
            freed.release()  # it went unusable while we queued (another call's trial, a 429)

    async def _wait_for_budget(
        self, call: Call, denied: list[tuple[Endpoint, Denial]], deadline: float, last_error: UpstreamError | None
    ) -> Endpoint:
        """Wait within ``queue_timeout`` for the fleet budget of the endpoint whose budget returns first."""
        endpoint, denial = min(denied, key=lambda pair: pair[1].wait)
        until = min(time.monotonic() + self.settings.queue_timeout, deadline)
        started = time.perf_counter()
        try:
            with call.observer.span("router.queue", model_group=call.model_group):
                slot = await _first_free([endpoint], until - time.monotonic()) if until > time.monotonic() else None
                if slot is not None:
                    return await self._with_budget(call, endpoint, until, last_error)
        finally:
            call.queue_wait += time.perf_counter() - started
        raise self._no_budget(call, endpoint, denial, last_error)

    async def _with_budget(
        self, call: Call, endpoint: Endpoint, until: float, last_error: UpstreamError | None
    ) -> Endpoint:
        """``endpoint``, whose slot the call holds, with its fleet budget too (waiting until ``until``);
        else the slot goes back and the call gets the denial as a 429."""
        budget = endpoint.budget
        if budget is None:
            return endpoint
        answer = await budget.take(call.payload, call.body, until)
        if isinstance(answer, Grant):
            call.fleet_grant = answer
            return endpoint
        endpoint.release()
        raise self._no_budget(call, endpoint, answer, last_error)

    @staticmethod
    def _no_budget(call: Call, endpoint: Endpoint, answer: Denial, last_error: UpstreamError | None) -> ProxyError:
        if last_error is not None:
            return last_error
        if answer.reason == "cooling":
            endpoint.cool_down(answer.wait, time.monotonic())
        return Overloaded(
            f"model group `{call.model_group}`: no fleet budget left for endpoint `{endpoint.name}` ({answer.reason})",
            retry_after=max(1.0, answer.wait),
        )

    def _nothing_usable(
        self, call: Call, endpoints: list[Endpoint], now: float, last_error: UpstreamError | None
    ) -> ProxyError:
        if last_error is not None:
            return last_error
        cooling = [e.cooldown_until - now for e in endpoints if e.cooldown_until > now]
        if cooling:
            return Overloaded(
                f"every endpoint of model group `{call.model_group}` is rate limited",
                retry_after=max(1.0, min(cooling)),
            )
        return NoEndpointAvailable(
            f"every endpoint of model group `{call.model_group}` is unhealthy or its circuit is open",
            retry_after=self._retry_in(endpoints, now),
        )

    def _retry_in(self, endpoints: list[Endpoint], now: float) -> float | None:
        """Seconds until the soonest of ``endpoints`` may be tried again: its circuit half-opens and
        (when unhealthy) its next probe is due. None when one cannot tell (a half-open trial in
        flight, no probe yet): it may be back any moment, so the caller is not told to wait."""
        soonest: float | None = None
        for endpoint in endpoints:
            if endpoint.gone:
                continue
            circuit, wait = endpoint.circuit, 0.0
            if circuit.state == "open" and now < circuit.open_until:
                wait = circuit.open_until - now
            elif not circuit.allows(now):
                return None
            if endpoint.healthy is False:
                if endpoint.last_probe_at is None:
                    return None
                wait = max(wait, endpoint.last_probe_at + self.settings.health.interval - now)
            soonest = wait if soonest is None else min(soonest, wait)
        return soonest

    def _record_failure(self, call: Call, endpoint: Endpoint, error: UpstreamError, now: float) -> None:
        kind = failure_kind(error)
        endpoint.last_error = f"status_{error.status}" if isinstance(error, UpstreamStatus) else type(error).__name__
        if isinstance(error, UpstreamStatus) and error.status in (429, 503, 529):
            rest = requested_rest(error.headers, time.time())
            if rest is None and error.status == 429:
                rest = self.settings.cooldown.default
            if rest:
                rest = min(rest, self.settings.cooldown.max)
                endpoint.cool_down(rest, now)
                call.observer.event("cooldown", endpoint=endpoint.name, seconds=rest)
                if endpoint.budget is not None:
                    endpoint.budget.cool(rest)  # the whole fleet rests it
        if kind in (None, "429"):
            # The endpoint answered sensibly: the call was wrong, or the endpoint is busy.
            if endpoint.circuit.success(now) is not None:
                self._circuit_event(call, endpoint)
            return
        endpoint.failures += 1
        if endpoint.circuit.failure(now) is not None:
            self._circuit_event(call, endpoint)

    @staticmethod
    def _circuit_event(call: Call, endpoint: Endpoint) -> None:
        state = endpoint.circuit.state
        if state == "open" and endpoint.budget is not None:
            endpoint.budget.cool(endpoint.circuit.config.open_for)  # the whole fleet stays away
        call.observer.event("circuit_open" if state == "open" else "circuit_close", endpoint=endpoint.name)
        event("circuit " + state, group=endpoint.group, endpoint=endpoint.name)


class Routed:
    """What ``Router.route`` returns. A class rather than ``@asynccontextmanager``: it runs
    once per call, and the generator-based manager costs ~2.5 µs more per use."""

    __slots__ = ("router", "call", "endpoint", "response", "started", "answered")
    # Set by ``Router._open`` once an attempt has opened an answer.
    endpoint: Endpoint
    response: Answer
    started: float
    answered: float

    def __init__(self, router: Router, call: Call) -> None:
        self.router = router
        self.call = call

    def __aenter__(self) -> Coroutine[Any, Any, Answer]:
        # The router's coroutine itself, not one awaiting it: a coroutine and a frame less per call.
        return self.router._open(self)

    async def __aexit__(self, *exc_info: object) -> None:
        call, endpoint = self.call, self.endpoint
        self.response.close()
        self.router._free(call, endpoint, failed=call.upstream_failure is not None)
        ended = time.perf_counter()
        call.upstream_seconds += ended - self.started
        if call.upstream_failure is not None:
            # The answer broke after it started (mid-stream); no fallback, but it counts.
            self.router._record_failure(call, endpoint, call.upstream_failure, time.monotonic())
        elif exc_info[0] is None:
            tokens = call.usage.get("output_tokens", 0) if call.stream else 0
            endpoint.observe_answer(self.answered - self.started, ended - self.started, tokens, time.monotonic())


def _discovered(endpoints: list[Endpoint], name: str) -> list[Endpoint]:
    """The endpoints discovery made for the set ``name`` (each named ``name@address``)."""
    return [e for e in endpoints if e.label == name and "@" in e.name]


async def _first_free(endpoints: list[Endpoint], timeout: float) -> Endpoint | None:
    """Wait up to ``timeout`` for a slot on any of ``endpoints``; the first one freed wins.

    Each endpoint's slots queue their waiters in order, so calls are served first come, first
    served. A slot taken by a waiter that lost the race is given back.
    """
    waiters = {asyncio.ensure_future(e.slots.take()): e for e in endpoints}
    finished = False
    winner: Endpoint | None = None
    for endpoint in endpoints:
        endpoint.queued += 1
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finished = True
    finally:
        for endpoint in endpoints:
            endpoint.queued -= 1
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        for waiter, endpoint in waiters.items():
            if waiter.cancelled() or waiter.exception() is not None:
                continue
            if finished and winner is None:
                winner = endpoint
                endpoint.in_flight += 1
            else:
                endpoint.slots.give()
    return winner
