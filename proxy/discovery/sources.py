"""What a discovery source reports: the addresses that may take calls now."""

from __future__ import annotations

from typing import NamedTuple


class Address(NamedTuple):
    host: str
    port: int
    #: the zone the address runs in (EndpointSlice ``zone``), when known
    zone: str | None = None
    #: EndpointSlice ``hints.forZones``: the zones the endpoint is meant to serve
    for_zones: tuple[str, ...] = ()
