"""``Fleet``: this sidecar's side of the budgets every sidecar on one Redis shares.

A ``Budget`` is one endpoint's fleet limits (``fleet:`` on the endpoint; endpoints naming the
same ``key`` share one). ``take(call, until)`` asks Redis once (``scripts.ACQUIRE``) and
answers with a ``Grant`` or a ``Denial``; when it may wait, the call queues behind this
sidecar's other waiters for the budget, first come first served, and asks again when the
rate's budget returns or, at the concurrency limit, every ``poll_interval``. ``release``
ends a grant: its lease freed and its tokens settled to the real usage, off the call's path:
the next ``ACQUIRE`` of the budget carries them, or, when none comes within ``RELEASE_DELAY``,
one ``RELEASE`` script per budget does.

A concurrency grant is a lease with a TTL: ``Fleet`` renews the leases it holds every third
of ``lease_ttl``, so a killed sidecar's leases lapse within ``lease_ttl`` and the next
``ACQUIRE`` removes them. The same loop sends a heartbeat, from which each sidecar knows how
many sidecars are live.

Redis down: ``RedisBackend.script`` answers ``None`` (at once, once its breaker is open), and
every budget falls back to a local share, the limit divided by the live sidecars last seen (at
least 1), counting the calls granted before; a call is never refused because Redis is down.
The renewal loop notices Redis is back; each sidecar then puts the leases it granted locally
into Redis, and for a grace period (the Redis breaker's cooldown and half a lease TTL, by which
time every other sidecar has done the same) grants a call only when both Redis and its local share
allow it, so that the calls of sidecars that do not know yet stay within their shares. The switch is logged once each way and shown by
``llm_sidecar_fleet_fail_open``.

Shared provider state: a 429's rest or an open circuit is published (``cool``) and every
sidecar's next ``ACQUIRE`` for that budget answers "cooling" until it ends.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
import uuid
from collections import Counter
from typing import Any

from proxy.cache.config import CacheConfig
from proxy.cache.redis import RedisBackend, Script, ScriptCall
from proxy.fleet import scripts
from proxy.fleet.config import FleetLimits, FleetSettings
from proxy.fleet.grants import REASONS, Denial, Grant
from proxy.telemetry.logs import event

#: ``ACQUIRE``'s status -> the denial's reason
_REASONS = dict(enumerate(REASONS, start=1))
#: seconds an ended call's lease waits for the budget's next ``ACQUIRE`` to carry it back (a busy
#: budget's releases then cost no round trip of their own; a quiet one's leave after this)
RELEASE_DELAY = 0.002


class LocalRate:
    """The same GCRA as ``scripts.ACQUIRE``, in this process: a rate's local share."""

    __slots__ = ("per_minute", "tat")

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.tat = 0.0

    def wait(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` fits (0: it fits now)."""
        interval = 60.0 / self.per_minute
        return max(self.tat, now) + cost * interval - now - max(self.per_minute / 60, 1) * interval

    def add(self, cost: float, now: float) -> None:
        self.tat = max(self.tat, now) + cost * 60.0 / self.per_minute


def estimate_tokens(payload: dict[str, Any], body: bytes) -> int:
    """What a call may cost before its answer says: its prompt (~4 bytes a token) and its output cap."""
    cap = payload.get("max_tokens") or payload.get("max_completion_tokens") or payload.get("max_output_tokens")
    return len(body) // 4 + (cap if isinstance(cap, int) and cap > 0 else 0)


class Budget:
    """One fleet budget as this sidecar sees it: what it holds, its queue, its counters."""

    def __init__(self, fleet: Fleet, key: str, limits: FleetLimits) -> None:
        self.fleet = fleet
        self.key = key
        tag = f"llm-sidecar:fleet:{{{fleet.namespace}/{key}}}"
        #: leases, held, wanting, rpm, tpm, cool, shares (see ``scripts.ACQUIRE``)
        self.keys = [f"{tag}:{part}" for part in ("leases", "held", "wanting", "rpm", "tpm", "cool", "shares")]
        self.limits = limits
        #: leases this sidecar holds (local grants' too), renewed by ``Fleet``
        self.held: set[str] = set()
        #: what ended calls give back, not sent yet: lease ids, and tokens (used minus reserved)
        self.freeing: list[str] = []
        self.settling = 0
        self.flush_due = False
        #: this sidecar's calls waiting for the budget, served in order
        self.turn = asyncio.Lock()
        self.local_rpm = LocalRate(1)
        self.local_tpm = LocalRate(1)
        # Read by /metrics and /status.
        #: leases in use fleet-wide, as the last answer from Redis said
        self.in_use = 0
        self.granted = 0
        self.denied: Counter[str] = Counter()
        self.waits = 0
        self.wait_seconds = 0.0
        #: leases found expired (a killed or stalled sidecar's) and removed
        self.expired = 0
        #: leases of this sidecar put back in Redis (lost in a restart, or given while it was away)
        self.restored = 0
        self.cooldowns_published = 0

    @property
    def limits(self) -> FleetLimits:
        return self._limits

    @limits.setter
    def limits(self, limits: FleetLimits) -> None:
        """New limits (a reload's too): ``ACQUIRE``'s fixed arguments change with them."""
        self._limits = limits
        fleet = self.fleet
        fixed = [fleet.instance, limits.max_concurrent or 0, fleet.lease_ms, limits.rpm or 0, limits.tpm or 0]
        self.acquire = ScriptCall(scripts.ACQUIRE, self.keys, fixed)

    def args(self, lease: str, tokens: int) -> list[Any]:
        """``ACQUIRE``'s arguments after its fixed ones; they carry what ended calls give back, if any is waiting."""
        freeing, settling = self.freeing, self.settling
        self.freeing, self.settling = [], 0
        return [lease, tokens, settling, *freeing]

    def give_back(self) -> list[Any] | None:
        """``RELEASE``'s arguments for what is waiting to be given back, or None."""
        if not self.freeing and not self.settling:
            return None
        freeing, settling = self.freeing, self.settling
        self.freeing, self.settling = [], 0
        return [self.fleet.instance, self.limits.tpm or 0, settling, *freeing]

    async def take(self, payload: dict[str, Any], body: bytes, until: float) -> Grant | Denial:
        """A grant, or the denial that still stands at ``until`` (``time.monotonic()``).

        Waits, when ``until`` allows, behind this sidecar's earlier waiters.
        """
        tpm = self.limits.tpm
        # One call's reservation is at most the rate's burst, so it can always pass; its real
        # usage is settled on release.
        tokens = min(estimate_tokens(payload, body), max(tpm // 60, 1)) if tpm else 0
        if not self.turn.locked():
            answer = await self._try(tokens)
            if isinstance(answer, Grant) or answer.reason == "cooling" or time.monotonic() >= until:
                return answer
        else:
            answer = Denial("concurrency", 0.0)  # others of this sidecar wait already: queue behind them
            if time.monotonic() >= until:
                return answer
        started = time.monotonic()
        self.waits += 1
        try:
            async with asyncio.timeout(until - started):
                await self.turn.acquire()
        except TimeoutError:
            self.wait_seconds += time.monotonic() - started
            return answer
        try:
            while True:
                answer = await self._try(tokens)
                if isinstance(answer, Grant) or answer.reason == "cooling":
                    return answer
                poll = self.fleet.settings.poll_interval * random.uniform(0.5, 1.5)
                pause = answer.wait or poll
                if self.limits.tpm:
                    # A request rate's wait is exact; a token budget's is at most that: calls in
                    # flight give back what they reserved and did not use when they end.
                    pause = min(pause, poll)
                if time.monotonic() + pause >= until:
                    return answer
                await asyncio.sleep(pause)
        finally:
            self.turn.release()
            self.wait_seconds += time.monotonic() - started

    async def _try(self, tokens: int) -> Grant | Denial:
        fleet = self.fleet
        lease = f"{fleet.instance}:{next(fleet.ids)}" if self.limits.max_concurrent else ""
        if fleet.open:
            if not fleet.recovering:
                return self._local(lease, tokens)
            # Redis is back but some sidecar may not know yet: its calls are not all in Redis, so
            # this one keeps to its local share too, and Redis records each call it grants.
            limit = self.limits.max_concurrent
            if limit and len(self.held) >= self._share(limit):
                self.denied["concurrency"] += 1
                return Denial("concurrency", 0.0)
        reply = await fleet.backend.call(None, self.acquire, self.args(lease, tokens))
        if reply is None:
            if fleet.backend.available:
                return Denial("unanswered", 0.0)  # one slow or failed reply: ask again shortly
            fleet.failing_open()  # Redis is down (its breaker opened)
            return self._local(lease, tokens)
        status, wait_ms, in_use, expired = reply
        self.in_use = in_use
        self.expired += expired
        if status == 0:
            self.granted += 1
            if lease:
                self.held.add(lease)
            return Grant(self, lease or None, tokens, False)
        denial = Denial(_REASONS[status], wait_ms / 1000)
        self.denied[denial.reason] += 1
        return denial

    def _local(self, lease: str, tokens: int) -> Grant | Denial:
        """The local share while Redis is away: each limit over the live sidecars last seen.
        Calls granted before Redis went away count against it."""
        fleet = self.fleet
        live = max(1, fleet.live)
        limits, now = self.limits, time.monotonic()
        if limits.max_concurrent and len(self.held) >= self._share(limits.max_concurrent):
            self.denied["concurrency"] += 1
            return Denial("concurrency", 0.0)
        wait = 0.0
        if limits.rpm:
            self.local_rpm.per_minute = max(1, limits.rpm // live)
            wait = self.local_rpm.wait(1, now)
        if limits.tpm and tokens:
            self.local_tpm.per_minute = max(1, limits.tpm // live)
            wait = max(wait, self.local_tpm.wait(tokens, now))
        if wait > 0:
            self.denied["rate"] += 1
            return Denial("rate", wait)
        if limits.rpm:
            self.local_rpm.add(1, now)
        if limits.tpm and tokens:
            self.local_tpm.add(tokens, now)
        if lease:
            self.held.add(lease)
        self.granted += 1
        return Grant(self, lease or None, tokens, True)

    def _share(self, limit: int) -> int:
        """This sidecar's local share of ``limit``: over the live sidecars last seen, at least 1."""
        return max(1, limit // max(1, self.fleet.live))

    def release(self, grant: Grant, usage: dict[str, int], failed: bool) -> None:
        """The call is over: free its lease, settle its tokens to what it used (all back if it failed
        without an answer; kept as reserved when the answer did not say)."""
        delta = 0
        if grant.tokens:
            used = usage.get("input_tokens", 0) + usage.get("output_tokens", 0)
            delta = used - grant.tokens if used else (-grant.tokens if failed else 0)
        if grant.local:  # its tokens were reserved here, not in Redis
            if delta:
                self.local_tpm.add(delta, time.monotonic())
            delta = 0
        if grant.lease is not None:
            self.held.discard(grant.lease)
            self.freeing.append(grant.lease)  # a local one too: the renewal may have put it in Redis
        self.settling += delta
        if not self.flush_due and (self.freeing or self.settling):
            self.flush_due = True
            self.fleet.release_soon(self)

    def cool(self, seconds: float) -> None:
        """Tell every sidecar to rest this endpoint for ``seconds`` (a 429's rest, an open circuit)."""
        self.cooldowns_published += 1
        self.fleet.background(scripts.COOL, [self.keys[5]], [max(1, int(seconds * 1000))])

    def snapshot(self) -> dict[str, Any]:
        limits = self.limits
        return {
            "key": self.key,
            "max_concurrent": limits.max_concurrent,
            "rpm": limits.rpm,
            "tpm": limits.tpm,
            "leases_in_use": self.in_use,
            "leases_held": len(self.held),
            "granted": self.granted,
            "denied": dict(self.denied),
            "waits": self.waits,
            "wait_seconds": round(self.wait_seconds, 3),
            "lease_expiries": self.expired,
            "leases_restored": self.restored,
            "cooldowns_published": self.cooldowns_published,
        }


class Fleet:
    """This sidecar's budgets, their lease renewal and heartbeat, and the fail-open state."""

    def __init__(self, cache: CacheConfig, settings: FleetSettings) -> None:
        # A client of its own: the cache's breaker stays the cache's, and a budget's reply may take
        # longer than a lookup (a slow answer there is only a miss; here it could mean failing open).
        self.backend = RedisBackend.from_config(cache)
        self.backend.timeout = settings.operation_timeout
        self.namespace = cache.namespace
        self.settings = settings
        self.lease_ms = int(settings.lease_ttl * 1000)
        #: this process's id in Redis (lease ids start with it)
        self.instance = uuid.uuid4().hex[:12]
        self.ids = itertools.count()
        self.budgets: dict[str, Budget] = {}
        #: live sidecars on this Redis, as the last heartbeat said
        self.live = 1
        #: true while Redis is away (or only just back) and budgets use their local share
        self.open = False
        #: when, Redis being back, the budgets are fleet-wide again
        self._recover_at: float | None = None
        # Long enough for every other sidecar to notice Redis is back (its breaker's next ping, then
        # its next renewal) and put its leases there before this one counts on Redis alone.
        self._grace = cache.breaker_cooldown + settings.lease_ttl / 2
        self._members_key = f"llm-sidecar:fleet:{{{cache.namespace}}}:members"
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keeper: asyncio.Task[None] | None = None

    def budget(self, key: str, limits: FleetLimits) -> Budget:
        """The budget named ``key`` (made on first use; a reload's new limits apply to it).

        The first one starts the heartbeat and renewal, so the live sidecars are known at once.
        """
        budget = self.budgets.get(key)
        if budget is None:
            budget = self.budgets[key] = Budget(self, key, limits)
        budget.limits = limits
        if self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep(), name="fleet-leases")
        return budget

    # ------------------------------------------------------------------ fail-open

    @property
    def recovering(self) -> bool:
        """Redis is back, but the budgets keep to their local share a little longer."""
        return self._recover_at is not None

    def failing_open(self) -> None:
        self._recover_at = None
        if not self.open:
            self.open = True
            event(
                "fleet limits: Redis unavailable, each budget falls back to its local share",
                logging.WARNING,
                live_sidecars=self.live,
            )

    # ------------------------------------------------------------------ background writes

    def release_soon(self, budget: Budget) -> None:
        """Give back what ``budget``'s ended calls hold unless an ``ACQUIRE`` carries it first."""
        asyncio.get_running_loop().call_later(RELEASE_DELAY, self._flush, budget)

    def _flush(self, budget: Budget) -> None:
        budget.flush_due = False
        args = budget.give_back()
        if args is not None:
            keys = budget.keys
            self.background(scripts.RELEASE, [keys[0], keys[1], keys[4], keys[2], keys[6]], args)

    def background(self, script: Script, keys: list[str], args: list[Any]) -> None:
        task = asyncio.get_running_loop().create_task(self.backend.script(None, script, keys, args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ renewal

    async def _keep(self) -> None:
        """Every third of the lease TTL: the heartbeat, and every held lease renewed."""
        while True:
            await self.renew()
            await asyncio.sleep(self.settings.lease_ttl / 3)

    async def renew(self) -> None:
        live = await self.backend.script(
            None, scripts.HEARTBEAT, [self._members_key], [self.instance, self.lease_ms * 2]
        )
        if live is None:
            if not self.backend.available:  # one slow reply is not Redis down; an open breaker is
                self.failing_open()
            return
        # A restarted Redis learns the members again one heartbeat at a time: until the budgets are
        # fleet-wide again, a smaller count would only inflate the local shares.
        self.live = max(self.live, int(live)) if self.open else int(live)
        await self._renew_leases()
        if self.open:
            now = time.monotonic()
            if self._recover_at is None:
                self._recover_at = now + self._grace
            elif now >= self._recover_at:
                self.open = False
                self._recover_at = None
                event("fleet limits: Redis available again, budgets are fleet-wide")

    async def _renew_leases(self) -> None:
        for budget in list(self.budgets.values()):
            held = list(budget.held)
            if not held:
                continue
            restored = await self.backend.script(
                None, scripts.RENEW, budget.keys[:2], [self.instance, self.lease_ms, *held]
            )
            budget.restored += restored or 0

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
        for budget in self.budgets.values():
            self._flush(budget)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        await self.backend.close()

    def snapshot(self) -> dict[str, Any]:
        return {
            "fail_open": self.open,
            "live_sidecars": self.live,
            "budgets": [b.snapshot() for b in self.budgets.values()],
        }
