"""Config reload: watch the file (and SIGHUP), build a new pipeline aside, swap it in whole.

One reload, in order:

1. Read the file. Unchanged bytes (same SHA-256) mean nothing to do. The content is
   compared, not the mtime: a Kubernetes ConfigMap volume swaps a ``..data`` symlink, so
   the path's own timestamps say little, and an editor may write twice in one tick.
   SIGHUP reloads even unchanged bytes (a rotated ``api_key_file`` is read again).
2. ``config_from_text``. A bad config is logged by its field paths (the messages carry
   no values), counted, and the running config keeps serving.
3. Sections that apply only at start (the listeners, the drain timeout, telemetry,
   retrieval) keep their running values; a warning says a restart is needed for them.
4. A new ``Router`` (fresh endpoint state) and ``HealthProber`` over the one upstream
   session. The cache object is kept while the ``cache`` section is unchanged (only its
   per-group policies are refreshed), else a new one is built. The one ``Telemetry`` is
   re-bound, so ``/metrics`` and ``/status`` show the new endpoints.
5. ``Current`` takes the new config and pipeline with no ``await`` in between. A call
   reads ``Current.pipeline`` once, when it starts, and finishes on that pipeline.
6. The old probes stop at once; a replaced cache is closed once the old pipeline's calls
   have ended, or after ``server.drain_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.cache import build_cache, group_caching
from proxy.config import Config, ConfigError, ServerConfig, config_from_text, with_server
from proxy.pipeline import Pipeline
from proxy.router.health import HealthProber
from proxy.router.router import Router
from proxy.telemetry.logs import event
from proxy.upstream import Upstream

if TYPE_CHECKING:
    from proxy.discovery.manager import Discovery
    from proxy.fleet.budget import Fleet

#: ``server`` fields a reload applies; the others are bound to the listeners at start
LIVE_SERVER_FIELDS = frozenset({"reload_interval"})


class Current:
    """What new calls take: the config, its pipeline and its probes; a reload replaces all three.
    The fleet's budgets (``proxy/fleet``) live as long as the process: every router shares them."""

    __slots__ = ("config", "pipeline", "prober", "discovery", "fleet")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pipeline: Pipeline  # set by ``pipeline_ctx`` at start-up, before any call or reload
        self.prober: HealthProber | None = None
        #: the discovery watches (``proxy/discovery/manager.py``), when some group discovers
        self.discovery: Discovery | None = None
        self.fleet: Fleet | None = None


def keep_restart_only(running: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` with the running values of the settings that apply only at start, and the
    names of those among them that ``new`` would change."""
    changed = [
        f"server.{name}"
        for name in ServerConfig.model_fields
        if name not in LIVE_SERVER_FIELDS and getattr(running.server, name) != getattr(new.server, name)
    ]
    changed += [name for name in ("telemetry", "retrieval") if getattr(running, name) != getattr(new, name)]
    server = running.server.model_copy(update={name: getattr(new.server, name) for name in LIVE_SERVER_FIELDS})
    kept = new.model_copy(update={"server": server, "telemetry": running.telemetry, "retrieval": running.retrieval})
    return kept, changed


def log_missing_keys(config: Config) -> None:
    """Say which endpoints have no key: their calls get an error, the other groups are served."""
    for problem in config.missing_keys():
        event("provider key missing: its calls get an error", logging.ERROR, missing=problem)


def _unknown_corpora(config: Config) -> list[str]:
    """Context injection that names a corpus the running retrieval did not load."""
    return [
        f"model_groups.{name}.context.corpus: corpus {group.context.corpus!r} is not loaded "
        "(retrieval changes need a restart)"
        for name, group in config.model_groups.items()
        if group.context is not None and group.context.corpus not in config.retrieval.corpora
    ]


class Reloader:
    """Watches one config file and swaps ``Current`` when it changes; started by ``reload_ctx``."""

    def __init__(
        self, path: str | Path, current: Current, upstream: Upstream, server_overrides: dict[str, Any] | None = None
    ) -> None:
        self.path = Path(path)
        #: ``server`` fields the command line set; they beat every version of the file
        self.server_overrides = dict(server_overrides or {})
        self.current = current
        self.upstream = upstream
        self.digest: str | None = None
        self._wake = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        with contextlib.suppress(OSError):
            self.digest = hashlib.sha256(await asyncio.to_thread(self.path.read_bytes)).hexdigest()
        self._watcher = asyncio.create_task(self._watch(), name="config-reload")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        # By now the listeners have drained: the replaced caches close at once.
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)

    def request(self) -> None:
        """Reload soon, changed or not (SIGHUP); reloads run one at a time in the watcher."""
        self._wake.set()

    async def _watch(self) -> None:
        while True:
            interval = self.current.config.server.reload_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval or None)
            forced = self._wake.is_set()
            self._wake.clear()
            try:
                await self.reload(force=forced)
            except Exception as exc:  # a bug must not end the watching; the running config stays
                event("config reload failed", logging.ERROR, path=str(self.path), error=type(exc).__name__)
                self._count(False)

    async def reload(self, force: bool = True) -> str:
        """Reload the file: ``"ok"``, ``"unchanged"`` or ``"error"`` (the running config kept)."""
        try:
            text = await asyncio.to_thread(self.path.read_bytes)
        except OSError as exc:
            digest = f"unreadable: {exc.strerror}"  # said once, not at every poll
            if digest == self.digest and not force:
                return "unchanged"
            self.digest = digest
            return self._failed([f"cannot read the config: {exc.strerror}"])
        digest = hashlib.sha256(text).hexdigest()
        if digest == self.digest and not force:
            return "unchanged"
        self.digest = digest
        try:
            config = await asyncio.to_thread(config_from_text, text.decode(), str(self.path))
            config = with_server(config, self.server_overrides)
        except (ConfigError, UnicodeDecodeError) as exc:
            # ConfigError messages name field paths and never a value (see proxy/config.py).
            message = str(exc) if isinstance(exc, ConfigError) else "the config is not UTF-8 text"
            return self._failed([line.strip() for line in message.splitlines() if line.strip()])
        return await self.apply(config)

    async def apply(self, new: Config) -> str:
        current = self.current
        running, old, old_prober = current.config, current.pipeline, current.prober
        assert old is not None and old_prober is not None
        config, restart = keep_restart_only(running, new)
        if errors := _unknown_corpora(config):
            return self._failed(errors)
        if restart:
            event("config reload: restart needed", logging.WARNING, path=str(self.path), sections=restart)
        if config == running:
            event("config reload: unchanged", path=str(self.path))
            self._count(True)
            return "unchanged"
        cache = old.cache
        if config.cache != running.cache:
            cache = build_cache(config)
        elif hasattr(cache, "groups"):
            cache.groups = group_caching(config)  # one assignment; a call reads it once, in lookup
        router = Router(config, self.upstream, fleet=current.fleet)
        router.adopt(old.router)
        pipeline = Pipeline(config, router, cache, old.telemetry)
        prober = HealthProber(list(router.endpoints()), self.upstream, config.router.health)
        # The swap: no await from here to the assignment, so no call sees half of it.
        old.telemetry.bind(config.model_groups, router, cache)
        current.config, current.pipeline, current.prober = config, pipeline, prober
        log_missing_keys(config)
        prober.start()
        if current.discovery is not None:
            current.discovery.follow(config.discovering())
        await old_prober.stop()
        if cache is not old.cache:
            task = asyncio.create_task(self._retire(old), name="config-reload-retire")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        event(
            "config reloaded",
            path=str(self.path),
            model_groups=sorted(config.model_groups),
            endpoints=sum(len(g.endpoints) for g in config.model_groups.values()),
            cache="new" if cache is not old.cache else "kept",
            restart_needed=restart or None,
        )
        self._count(True)
        return "ok"

    async def _retire(self, pipeline: Pipeline) -> None:
        """Close the replaced pipeline's cache once its calls have ended (or the drain timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + pipeline.config.server.drain_timeout
        try:
            while pipeline.in_flight and loop.time() < deadline:
                await asyncio.sleep(0.05)
            if pipeline.in_flight:
                event(
                    "config reload: closing the old cache with calls still on it",
                    logging.WARNING,
                    calls=pipeline.in_flight,
                )
        finally:
            await pipeline.cache.close()

    def _failed(self, errors: list[str]) -> str:
        event("config reload failed", logging.ERROR, path=str(self.path), errors=errors)
        self._count(False)
        return "error"

    def _count(self, ok: bool) -> None:
        self.current.pipeline.telemetry.reloaded(ok)
