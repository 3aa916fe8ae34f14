"""``ResponseCache``: the pipeline's cache step, over any backend (memory or Redis).

The pipeline calls, in order (each may be the last):

``lookup(call)``    a fresh stored answer is replayed in the form the call asks
                    for (hit); otherwise the call gets a ``Ticket`` and misses
``coalesce(call)``  an identical call already in flight answers this one too;
                    otherwise this call leads: identical calls that come now
                    follow it, and across pods a short Redis lock makes the
                    other pods wait (bounded) for this pod's entry
``recorder(call)``  what the relay feeds; it publishes frames to followers and
                    stores the entry in the background once it is complete
``rescue(call, e)`` the call failed: its followers learn of it, and an expired
                    entry within ``stale_if_error`` may answer instead
``settle(call)``    always, at the end: a leader that ended without an answer
                    (cancelled, say) releases its followers

Every call passes through at most one of: hit, coalesced, miss (+ store) or
bypass; ``call.cache_status`` and ``call.outcome`` say which, ``stats`` counts it.
The cache fails open: a backend that fails answers "miss" (see ``cache/redis.py``).

With Redis, a small in-process tier (a ``MemoryBackend`` bounded by
``local_max_bytes``) sits in front of it: entries read from or written to Redis
are kept here for ``local_ttl`` seconds, never past their own expiry, so a key
that is hit again and again costs no round trip. Keys hash everything that
changes an answer, so a local copy can only lag Redis in two ways, both bounded
by ``local_ttl``: an entry another pod refreshed (``no-cache``) or deleted. A
local copy that is too old for the call (``max-age``) sends the lookup on to
Redis, which may hold a younger one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.cache.coalesce import Flight, Following
from proxy.cache.compression import CorruptValue
from proxy.cache.config import CacheConfig, CachePolicy
from proxy.cache.directives import STATUS_HEADER, Directives, parse_directives
from proxy.cache.entry import Entry, Stored
from proxy.cache.keys import is_deterministic, scope_prefix, scoped_key, tenant
from proxy.cache.memory import MemoryBackend
from proxy.cache.recorder import NULL_RECORDER, EntryRecorder, Recorder
from proxy.cache.stats import CacheStats
from proxy.call import Call
from proxy.dialects.forms import Form, form_of, wants_usage
from proxy.errors import NoEndpointAvailable, Overloaded, ProxyError, UpstreamError

#: call.cache_status -> the counter it adds to (exclusive: a coalesced call is not also a miss)
_COUNTERS = {"hit": "hits", "miss": "misses", "coalesced": "coalesced", "stale": "stale", "bypass": "bypass"}
#: a leader that fails makes its followers elect a new one; after this many, each goes alone
_ELECTIONS = 2
#: keys remembered for the bodies last seen (``ResponseCache._key``), each body at most this long:
#: the memo holds at most ~1 MiB of request bodies
_KEYS_KEPT = 256
_KEY_BODY_MAX = 4096
#: compressed entries of an in-process tier kept decoded (``ResponseCache._unpacked``), each body at
#: most this long: at most 4 MiB of answers beyond the tier's bound
_UNPACKED_KEPT = 64
_UNPACKED_BODY_MAX = 64 * 1024
#: the failures a ``stale_if_error`` entry answers: every upstream failed, or none could be tried
_UPSTREAMS_FAILED = (UpstreamError, NoEndpointAvailable, Overloaded)


@dataclass(slots=True)
class Ticket:
    """One cacheable call's dealings with the cache."""

    key: str
    policy: CachePolicy
    directives: Directives
    form: Form
    #: an OpenAI stream that asked for the usage chunk
    wants_usage: bool
    #: an expired entry still inside the ``stale_if_error`` window
    stale: Entry | None = None
    #: the flight this call leads, if it leads one
    flight: Flight | None = None
    lock_token: str | None = None


@dataclass(frozen=True, slots=True)
class GroupCaching:
    policy: CachePolicy
    #: credentials pass through to an endpoint, so each credential is its own tenant
    per_credential: bool


#: a ticket's part that depends only on dialect, operation and model group (``ResponseCache._scope``)
_Scope = tuple[GroupCaching, bytes, Form]


class ResponseCache:
    def __init__(
        self, config: CacheConfig, groups: dict[str, GroupCaching], backend: Any, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        #: wall-clock seconds: entries carry their creation time across pods (tests give a clock they move)
        self.clock = clock
        self._groups = groups
        self.backend = backend
        self.stats = CacheStats()
        self.flights: dict[str, Flight] = {}
        #: (dialect, operation path, model group) -> ``_scope``'s answer
        self._scopes: dict[tuple[str, str, str], _Scope | None] = {}
        #: (tenant, scope prefix, body) -> that call's key, for the bodies last seen
        self._keys: dict[tuple[str, bytes, bytes], str] = {}
        #: key -> (the compressed value an in-process tier holds, that value decoded)
        self._unpacked_entries: dict[str, tuple[bytes, Entry]] = {}
        #: the in-process tier in front of a shared backend (Redis), or None
        self.local: MemoryBackend | None = None
        if backend.distributed and config.local_ttl > 0 and config.local_max_bytes > 0:
            self.local = MemoryBackend(config.local_max_bytes, clock)
        self._get_now: Callable[[str], Any] | None = None if backend.distributed else backend.get_now
        # Strong references to background store tasks, so none is collected mid-way.
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def groups(self) -> dict[str, GroupCaching]:
        return self._groups

    @groups.setter
    def groups(self, groups: dict[str, GroupCaching]) -> None:
        # A config reload that keeps this cache sets its groups' new policies: what tickets
        # worked out from the old ones goes with them.
        self._groups = groups
        self._scopes = {}

    # ------------------------------------------------------------------ lookup

    def ticket(self, call: Call) -> Ticket | None:
        """The call's ticket, or ``None`` when its answer must not be cached at all."""
        where = (call.dialect.name, call.operation.path, call.model_group)
        try:
            scope = self._scopes[where]
        except KeyError:
            scope = self._scope(call, where)
        if scope is None:
            return None
        group, prefix, form = scope
        payload = call.payload
        if group.policy.mode == "deterministic" and not is_deterministic(payload, call.operation.path):
            return None
        name = tenant(self.config.namespace, call.client_key, group.per_credential)
        return Ticket(
            self._key(name, prefix, call),
            group.policy,
            parse_directives(call.request.headers),
            form,
            call.stream and wants_usage(payload),
        )

    def _key(self, tenant_name: str, prefix: bytes, call: Call) -> str:
        """The call's key; a body seen again (the same bytes, tenant and scope) reuses the key worked
        out the first time, without the canonical dump and hash (~17,000 instructions a call).

        ``call.payload`` is what ``call.body`` parses to (the pipeline sets both), so the same
        bytes make the same key. The memo holds the last ``_KEYS_KEPT`` small bodies, never
        a credential (a tenant is a hash of it), and is never shown anywhere.
        """
        body = call.body
        if body.__class__ is not bytes or not 0 < len(body) <= _KEY_BODY_MAX:
            return scoped_key(tenant_name, prefix, call.payload)
        seen = (tenant_name, prefix, body)
        key = self._keys.get(seen)
        if key is None:
            key = scoped_key(tenant_name, prefix, call.payload)
            if len(self._keys) >= _KEYS_KEPT:
                del self._keys[next(iter(self._keys))]  # the oldest
            self._keys[seen] = key
        return key

    def _scope(self, call: Call, where: tuple[str, str, str]) -> _Scope | None:
        """What a ticket takes from the call's dialect, operation and model group alone, worked
        out on their first call and kept: the group's caching, the key's scope, the answer's form;
        ``None`` when such calls are never cached."""
        group = self.groups.get(call.model_group)
        scope = None
        if group is not None and group.policy.mode != "off" and call.operation.cacheable:
            name = f"{call.dialect.name}{call.operation.path}:{call.model_group}"
            scope = (group, scope_prefix(name), form_of(call.dialect.name, call.operation.path))
        if group is not None:  # only configured groups: the table stays bounded
            self._scopes[where] = scope
        return scope

    async def lookup(self, call: Call) -> Stored | None:
        """A stored answer to replay; ``None`` on a miss or a bypass."""
        ticket = self.ticket(call)
        if ticket is None or ticket.directives.no_cache:
            call.cache_status = "bypass"
            call.response_headers[STATUS_HEADER] = "bypass"
            if ticket is not None:
                call.cache_ticket = ticket  # no-cache still stores the fresh answer
            return None
        call.cache_ticket = ticket
        started = time.perf_counter()
        now = self.clock()
        with call.observer.span("cache.lookup"):
            entry = self._local_entry(ticket, now) if self.local is not None else None
            if entry is not None:
                body = self.render(entry, ticket, call.stream)
                if body is not None:
                    self.stats.lookups += 1
                    self.stats.local_hits += 1
                    self.stats.lookup_seconds += time.perf_counter() - started
                    return self.serve(call, entry, body, "hit", now)
            # The memory backend answers at once: no coroutine to make and await per hit.
            if self._get_now is not None:
                value = self._get_now(ticket.key)
                entry = self._unpacked(ticket.key, value)
            else:
                value = await self.backend.get(ticket.key)
                entry = self._decode(value)
            if entry is not None and self.local is not None:
                self._keep_local(ticket.key, value, entry)
        self.stats.lookups += 1
        self.stats.lookup_seconds += time.perf_counter() - started
        if entry is not None:
            now = self.clock()
            if entry.fresh(now, ticket.directives.max_age):
                body = self.render(entry, ticket, call.stream)
                if body is not None:
                    return self.serve(call, entry, body, "hit", now)
            elif ticket.policy.stale_if_error and entry.age(now) < entry.ttl + ticket.policy.stale_if_error:
                ticket.stale = entry
        call.cache_status = "miss"
        call.response_headers[STATUS_HEADER] = "miss"
        return None

    def _local_entry(self, ticket: Ticket, now: float) -> Entry | None:
        """A fresh entry of the in-process tier; ``None`` sends the lookup on to the backend."""
        if self.local is None:
            return None
        entry = self._unpacked(ticket.key, self.local.get_now(ticket.key))
        if entry is None or not entry.fresh(now, ticket.directives.max_age):
            return None  # expired, or too old for this call: Redis may hold a younger one
        return entry

    def _keep_local(self, key: str, value: bytes, entry: Entry) -> None:
        """Keep a copy for ``local_ttl`` seconds, never past the entry's own expiry."""
        ttl = min(self.config.local_ttl, entry.created + entry.ttl - self.clock())
        if ttl > 0 and self.local is not None:
            self.local.set_now(key, entry.keepable(value), ttl)

    def _unpacked(self, key: str, value: bytes | Entry | None) -> Entry | None:
        """An in-process tier's value, decoded; a compressed one is decompressed once and kept
        while the tier holds that same value (a streamed answer is compressed above
        ``compress_threshold``: decompressing it cost each hit ~40,000 instructions, 10 %).

        The identity check is safe: what is kept holds the value, so no other object takes its
        id; a value stored again under the key is another object, decoded anew.
        """
        if value is None or isinstance(value, Entry):  # an Entry: kept decoded by the tier itself
            return value
        kept = self._unpacked_entries.get(key)
        if kept is not None and kept[0] is value:
            return kept[1]
        entry = self._decode(value)
        if entry is not None and len(entry.body) <= _UNPACKED_BODY_MAX:
            if key not in self._unpacked_entries and len(self._unpacked_entries) >= _UNPACKED_KEPT:
                del self._unpacked_entries[next(iter(self._unpacked_entries))]  # the oldest
            self._unpacked_entries[key] = (value, entry)
        return entry

    def _decode(self, value: bytes | Entry | None) -> Entry | None:
        if value is None:
            return None
        if isinstance(value, Entry):  # kept decoded by an in-process tier
            return value
        try:
            return Entry.decode(value)
        except CorruptValue:
            self.stats.corrupt += 1
            return None

    def render(self, entry: Entry, ticket: Ticket, stream: bool) -> bytes | None:
        """The entry's body in the form the call asks for; ``None`` when it cannot be made."""
        form = ticket.form
        if stream:
            if entry.stream:
                if not form.optional_usage or entry.has_usage == ticket.wants_usage:
                    return entry.body
                # A stored stream without the usage chunk cannot serve a call that wants it.
                return form.strip_usage(entry.body) if entry.has_usage else None
            document = _loads(entry.body)
            return form.to_frames(document, ticket.wants_usage) if document is not None else None
        if not entry.stream:
            return entry.body
        document = form.to_json(entry.body)
        return orjson.dumps(document) if document is not None else None

    def serve(self, call: Call, entry: Entry, body: bytes, status: str, now: float | None = None) -> Stored:
        """The call is answered from the cache (``status``: hit, coalesced or stale); ``now``: the
        clock's reading the entry was just found fresh at, if there is one."""
        call.cache_status = status
        call.outcome = "coalesced" if status == "coalesced" else "cached"
        # The tokens this answer would have cost upstream: telemetry counts them as saved.
        call.usage = {"input_tokens": entry.input_tokens, "output_tokens": entry.output_tokens}
        self.stats.input_tokens_saved += entry.input_tokens
        self.stats.output_tokens_saved += entry.output_tokens
        return Stored(entry, body, status, int(entry.age(self.clock() if now is None else now)))

    # ------------------------------------------------------------------ coalescing

    async def coalesce(self, call: Call) -> Stored | Following | None:
        """The answer of an identical call in flight; ``None`` when this call must go upstream."""
        ticket: Ticket | None = call.cache_ticket
        if ticket is None or ticket.directives.no_cache or ticket.directives.no_store:
            return None
        for _ in range(_ELECTIONS):
            flight = self.flights.get(ticket.key)
            if flight is None:
                return await self._lead(call, ticket)
            if not flight.joinable:
                return None  # too large to store: not kept for late followers (``Flight.overflow``)
            if call.stream and flight.stream and ticket.wants_usage and not flight.has_usage:
                return None  # the leader's stream lacks the usage chunk this call wants
            answer = await self._follow(call, ticket, flight)
            if answer is not None:
                return answer
        return None

    async def _lead(self, call: Call, ticket: Ticket) -> Stored | None:
        flight = Flight(call.stream, not call.stream or ticket.wants_usage)
        self.flights[ticket.key] = flight
        ticket.flight = flight
        if not self.backend.distributed:
            return None
        lock = ticket.key + ":lock"
        token = await self.backend.acquire(lock, self.config.lock_ttl)
        if token is not None:
            # Another pod may have stored the answer between our lookup and the lock.
            entry = self._decode(await self.backend.get(ticket.key))
            if entry is None or not entry.fresh(self.clock(), ticket.directives.max_age):
                ticket.lock_token = token
                return None
            await self.backend.release(lock, token, self.config.lock_ttl)
        else:
            entry = await self._wait_for_pod(ticket.key, lock)
            if entry is None:
                # The other pod gave up or died: lead (and lock) ourselves.
                ticket.lock_token = await self.backend.acquire(lock, self.config.lock_ttl)
                return None
        body = self.render(entry, ticket, call.stream)
        flight.finish(entry)
        self._land(ticket)
        if body is None:
            return None
        return self.serve(call, entry, body, "coalesced")

    async def _wait_for_pod(self, key: str, lock: str) -> Entry | None:
        """Poll for another pod's entry while it holds the lock, up to ``coalesce_wait``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.coalesce_wait
        delay = 0.01
        while loop.time() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.1)
            entry = self._decode(await self.backend.get(key))
            if entry is not None:
                return entry
            if not await self.backend.exists(lock):
                return self._decode(await self.backend.get(key))
        return None

    async def _follow(self, call: Call, ticket: Ticket, flight: Flight) -> Stored | Following | None:
        flight.followers += 1
        try:
            if call.stream and flight.stream:
                await flight.changed(0)
                if flight.frames and flight.joinable:
                    # Fan-out: the leader's frames go to this follower's client as they arrive.
                    call.cache_status = "coalesced"
                    call.outcome = "coalesced"
                    skip_usage = ticket.form.optional_usage and flight.has_usage and not ticket.wants_usage
                    return Following(flight, ticket.form.is_usage_frame if skip_usage else None)
            await flight.ended()
        finally:
            flight.followers -= 1
        if not flight.done:
            return None  # it grew too large to store while this call waited: go alone
        if flight.entry is None:
            if flight.error is not None:
                raise flight.error  # the upstream rejected the request itself: same answer for all
            return None
        body = self.render(flight.entry, ticket, call.stream)
        if body is None:
            return None
        return self.serve(call, flight.entry, body, "coalesced")

    # ------------------------------------------------------------------ recording

    def recorder(self, call: Call) -> Recorder:
        ticket: Ticket | None = call.cache_ticket
        if ticket is None or (ticket.directives.no_store and ticket.flight is None):
            return NULL_RECORDER
        ttl = ticket.directives.ttl or ticket.policy.ttl
        return EntryRecorder(
            lambda entry: self._recorded(ticket, entry), ticket.flight, ticket.policy.max_entry_bytes, ttl, self.clock
        )

    def _recorded(self, ticket: Ticket, entry: Entry | None) -> None:
        if ticket.flight is not None:
            if entry is None:
                ticket.flight.fail(None)
            else:
                ticket.flight.finish(entry)
        if entry is None or ticket.directives.no_store or len(entry.body) > ticket.policy.max_entry_bytes:
            if not ticket.directives.no_store:
                self.stats.not_stored += 1
            self._land(ticket)
            return
        task = asyncio.get_running_loop().create_task(self._store(ticket, entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store(self, ticket: Ticket, entry: Entry) -> None:
        try:
            window = ticket.policy.stale_if_error
            value = entry.encode(self.config.compress_threshold)
            if self.local is not None:
                self._keep_local(ticket.key, value, entry)
            # The memory backend keeps the entry itself (when not compressed): a hit decodes nothing.
            kept = value if self.backend.distributed else entry.keepable(value)
            if await self.backend.set(ticket.key, kept, entry.ttl + window):
                self.stats.stores += 1
            else:
                self.stats.store_failures += 1
        finally:
            self._land(ticket)

    def _land(self, ticket: Ticket) -> None:
        """The flight is over and its entry stored (or not): later calls look it up instead."""
        flight = ticket.flight
        if flight is not None and self.flights.get(ticket.key) is flight:
            del self.flights[ticket.key]
        ticket.flight = None
        if ticket.lock_token is not None:
            token, ticket.lock_token = ticket.lock_token, None
            release = self.backend.release(ticket.key + ":lock", token, self.config.lock_ttl)
            task = asyncio.get_running_loop().create_task(release)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ failure

    async def rescue(self, call: Call, error: ProxyError) -> Stored | None:
        """Tell the followers; answer with a stale entry if the policy allows one."""
        ticket: Ticket | None = call.cache_ticket
        if ticket is None:
            return None
        if ticket.flight is not None:
            ticket.flight.fail(error)
            self._land(ticket)
        # The router's own 503 and 429 count too: once the endpoints' circuits are open or they
        # rest after a 429, no upstream is called, and the outage goes on.
        if ticket.stale is None or not isinstance(error, _UPSTREAMS_FAILED):
            return None
        body = self.render(ticket.stale, ticket, call.stream)
        if body is None:
            return None
        return self.serve(call, ticket.stale, body, "stale")

    def settle(self, call: Call) -> None:
        """Count the call's cache outcome once; end a flight whose leader ended without an answer."""
        counter = _COUNTERS.get(call.cache_status)
        if counter is not None:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        ticket: Ticket | None = call.cache_ticket
        if ticket is not None and ticket.flight is not None and not ticket.flight.done:
            ticket.flight.fail(None)
            self._land(ticket)

    # ------------------------------------------------------------------ lifecycle and stats

    def snapshot(self) -> dict[str, Any]:
        """Counters for a metrics collector, read at scrape time."""
        stats = {name: getattr(self.stats, name) for name in self.stats.__slots__}
        # Failed operations, those skipped while the Redis circuit is open (each a miss or an
        # answer not stored), and unreadable entries.
        stats["errors"] = getattr(self.backend, "errors", 0) + getattr(self.backend, "skipped", 0) + self.stats.corrupt
        # The memory backend's size; with Redis, the in-process tier's (Redis's own is Redis's to tell).
        sized = self.local if self.local is not None else self.backend
        stats["entries"] = getattr(sized, "entries", None)
        stats["bytes"] = getattr(sized, "bytes", None)
        stats["in_flight"] = len(self.flights)
        stats["available"] = getattr(self.backend, "available", True)
        return stats

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        await self.backend.close()


def _loads(body: bytes) -> dict[str, Any] | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None
