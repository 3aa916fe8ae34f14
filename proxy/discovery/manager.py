"""``Discovery``: one watch per model group that discovers, feeding whichever router is current.

A watch outlives config reloads that leave its ``discover`` section alone: the new
router adopts the endpoints the old one had (``Router.adopt``), and the watch goes on
publishing into it. A reload that changes or adds a section starts its watch; one that
drops it stops the watch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from proxy.discovery.config import DiscoverConfig
from proxy.discovery.sources import Address
from proxy.router.health import HealthProber
from proxy.router.router import Router
from proxy.telemetry.logs import event


class Discovery:
    def __init__(self, live: Callable[[], tuple[Router, HealthProber | None]]) -> None:
        self._live = live
        self._watches: dict[str, tuple[DiscoverConfig, asyncio.Task[None]]] = {}
        #: the addresses each watch last reported
        self._addresses: dict[str, list[Address]] = {}

    def follow(self, groups: dict[str, DiscoverConfig]) -> None:
        """Run one watch per ``group: discover`` section; stop those no longer wanted.

        Called again after a reload: a watch that goes on gives the new router its addresses
        at once (it only reports changes, and the new router may not have adopted them)."""
        for group, (config, task) in list(self._watches.items()):
            if groups.get(group) != config:
                task.cancel()
                del self._watches[group]
                self._addresses.pop(group, None)
        for group, config in groups.items():
            if group not in self._watches:
                task = asyncio.create_task(self._run(group, config), name=f"discover:{group}")
                self._watches[group] = (config, task)
            elif group in self._addresses:
                self.publish(group, config, self._addresses[group])

    async def stop(self) -> None:
        tasks = [task for _, task in self._watches.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watches.clear()

    def publish(self, group: str, config: DiscoverConfig, addresses: list[Address]) -> None:
        """Give the current router the group's addresses, and its prober the endpoints' probes."""
        router, prober = self._live()
        route = router.routes.get(group)
        if route is None or route.discover != config:
            return  # a reload replaced this section; its own watch publishes
        self._addresses[group] = addresses
        added, gone = router.discovered(group, addresses)
        if prober is not None:
            prober.forget(gone)
            prober.watch(added)
        if added or gone:
            event(
                "discovered endpoints changed",
                group=group,
                source=config.name,
                endpoints=len(addresses),
                added=[e.name for e in added],
                gone=[e.name for e in gone],
            )

    async def _run(self, group: str, config: DiscoverConfig) -> None:
        def publish(addresses: list[Address]) -> None:
            self.publish(group, config, addresses)

        watch: Coroutine[Any, Any, None]
        try:
            if config.service is not None:
                from proxy.discovery.kube import EndpointSliceWatch, KubeApi

                watch = EndpointSliceWatch(config, KubeApi(), publish).run()
            else:
                from proxy.discovery.dns import DnsWatch

                watch = DnsWatch(config, publish).run()
            await watch
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a watch that cannot even start: say why, keep serving the rest
            event("discovery stopped", logging.ERROR, group=group, source=config.name, error=str(exc))
