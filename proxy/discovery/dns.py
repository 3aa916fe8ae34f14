"""A DNS name's addresses, looked up again when their TTL runs out (dnspython).

For clusters where the sidecar may not read EndpointSlices: a headless Service's name
resolves to its ready pods' addresses. The records carry no zone, so these endpoints
are placed by region only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from proxy.discovery.config import DiscoverConfig
from proxy.discovery.sources import Address
from proxy.telemetry.logs import event


class DnsWatch:
    """Keeps ``publish`` told of the name's A and AAAA records, until cancelled."""

    def __init__(self, config: DiscoverConfig, publish: Callable[[list[Address]], None]) -> None:
        assert config.dns is not None and isinstance(config.port, int)
        self.config = config
        self.publish = publish
        self.resolver = dns.asyncresolver.Resolver(configure=not config.nameservers)
        if config.nameservers:
            self.resolver.nameservers = [_nameserver(s) for s in config.nameservers]
        self.resolver.lifetime = 5.0
        self._published: list[Address] | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(await self.resolve())

    async def resolve(self) -> float:
        """Look the name up once and publish a change; the seconds until the next look-up."""
        config = self.config
        assert config.dns is not None and isinstance(config.port, int)
        found: set[Address] = set()
        ttls = []
        failed: list[str] = []
        for kind in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(config.dns, kind)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue  # no such records (a headless Service without ready pods has none)
            except dns.exception.DNSException as exc:
                failed.append(type(exc).__name__)  # some servers refuse a family they do not serve
                continue
            assert answer.rrset is not None
            ttls.append(answer.rrset.ttl)
            found.update(Address(r.address, config.port) for r in answer)
        if len(failed) == 2:
            event(
                "discovery: DNS look-up failed; the last addresses stay",
                logging.WARNING,
                name=config.dns,
                error=failed[0],
            )
            return config.min_ttl
        addresses = sorted(found)
        if addresses != self._published:
            self._published = addresses
            self.publish(addresses)
        return min(config.max_ttl, max(config.min_ttl, min(ttls, default=config.min_ttl)))


def _nameserver(server: str) -> dns.nameserver.Do53Nameserver:
    """``host`` or ``host:port`` (``[v6]:port``) as a plain-DNS server."""
    host, _, port = server.rpartition(":") if server.count(":") == 1 or server.startswith("[") else (server, "", "")
    return dns.nameserver.Do53Nameserver(host.strip("[]") or server, int(port) if port else 53)
