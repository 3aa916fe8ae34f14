"""A model group's ``discover`` section: where its endpoints come from when no list names them.

```yaml
model_groups:
  llama:
    discover:
      service: vllm           # the Service whose EndpointSlices list the ready pods
      namespace: models       # default: the sidecar's own namespace
      port: http              # the Service port's name (or its number)
      path: /v1               # the base path on each address (an OpenAI-style server)
      endpoint: {model: meta-llama/Llama-3.1-8B-Instruct, max_concurrent: 32}
  # or, without RBAC to read EndpointSlices: a headless Service's DNS name, re-resolved on its TTL
  ollama:
    discover: {dns: ollama-headless.models.svc.cluster.local, port: 11434}
```
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from proxy.endpoint_config import EndpointConfig, Strict

#: the URL a template starts with; each discovered address gets its own
_PLACEHOLDER_URL = "http://discovered.invalid"


class EndpointTemplate(EndpointConfig):
    """The settings every discovered address shares: an endpoint's fields but ``url`` and
    ``probe_url`` (each address has its own). ``name`` names the set (``vllm``); each
    endpoint is named ``vllm@10.0.1.5:8000``."""

    name: str = Field("", pattern=r"^[^@]*$")
    url: str = _PLACEHOLDER_URL

    @model_validator(mode="after")
    def _no_fixed_address(self) -> EndpointTemplate:
        fixed = sorted({"url", "probe_url"} & self.model_fields_set)
        if fixed:
            raise ValueError(f"{', '.join(fixed)}: set by discovery for each address (use discover.path)")
        return self

    def at(self, host: str, port: int, scheme: str, path: str, zone: str | None, region: str | None) -> EndpointConfig:
        """The endpoint for one discovered address."""
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # The fields as they are (a dump would turn the key's Secret into its "***").
        fields = {name: getattr(self, name) for name in self.model_fields_set - {"name", "url", "probe_url"}}
        fields.setdefault("zone", zone)
        fields.setdefault("region", region)
        return EndpointConfig(name=f"{self.name}@{address}", url=f"{scheme}://{address}{path}", **fields)


class DiscoverConfig(Strict):
    """Endpoints from the Kubernetes API (``service``) or from DNS (``dns``), kept current."""

    #: a Service: its EndpointSlices are listed and watched through the API server
    service: str | None = Field(None, min_length=1)
    #: the Service's namespace; default: the sidecar's own
    namespace: str | None = None
    #: a DNS name whose A/AAAA records are the addresses (a headless Service), re-resolved on its TTL
    dns: str | None = Field(None, min_length=1)
    #: DNS servers to ask (``host`` or ``host:port``); default: the system's (/etc/resolv.conf)
    nameservers: list[str] = []
    #: the port: a Service port's name or number (``service``), a number (``dns``)
    port: str | int | None = None
    scheme: Literal["http", "https"] = "http"
    #: appended to ``scheme://address:port``: the base URL an SDK would use
    path: str = Field("/v1", pattern=r"^(/.*)?$")
    #: seconds between full re-lists of the EndpointSlices (the watch keeps up in between)
    resync: float = Field(300.0, gt=0)
    #: seconds between DNS look-ups at least and at most (the record's TTL in between)
    min_ttl: float = Field(1.0, gt=0)
    max_ttl: float = Field(60.0, gt=0)
    endpoint: EndpointTemplate = EndpointTemplate()

    @model_validator(mode="after")
    def _one_source(self) -> DiscoverConfig:
        if (self.service is None) == (self.dns is None):
            raise ValueError("set one of service (EndpointSlices) or dns (a headless Service's name)")
        if self.dns is not None and not isinstance(self.port, int):
            raise ValueError("port: a number is needed with dns (DNS A records carry no port)")
        if self.service is not None and (self.nameservers):
            raise ValueError("nameservers: only with dns")
        if not self.endpoint.name:
            name = self.service or (self.dns or "").split(".")[0]
            object.__setattr__(self, "endpoint", self.endpoint.model_copy(update={"name": name}))
        return self

    @property
    def name(self) -> str:
        return self.endpoint.name
