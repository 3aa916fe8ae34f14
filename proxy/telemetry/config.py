"""The telemetry config section: logs, metrics, traces and prices.

```yaml
telemetry:
  log_level: info
  access_log: true
  log_prompts: false          # never on in production: prompts are user data
  metrics: true
  tracing:
    enabled: true
    exporter: otlp            # otlp (HTTP/protobuf) | none (spans made, not sent)
    endpoint: http://otel-collector:4318/v1/traces   # else OTEL_EXPORTER_OTLP_* env
    sample_ratio: 0.1
  prices:                     # per model group, per million tokens
    gpt-4o: {input: 2.5, output: 10}
```
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    """What a million tokens cost (in USD, or whatever one currency all prices use)."""

    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)


class TracingConfig(_Strict):
    enabled: bool = False
    #: ``otlp`` sends spans over OTLP/HTTP; ``none`` makes them for in-process processors only
    exporter: Literal["otlp", "none"] = "otlp"
    #: the full traces URL; unset, the exporter reads ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT``
    endpoint: str | None = Field(None, pattern=r"^https?://")
    #: extra headers for the collector (e.g. a tenant); values are not logged
    #: often an auth header: kept out of ``repr`` so a logged config never shows it
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    timeout: float = Field(10.0, gt=0)
    service_name: str = "llm-sidecar"
    #: the share of calls without a sampled parent that are traced (parent-based sampling)
    sample_ratio: float = Field(1.0, ge=0, le=1)


class TelemetryConfig(_Strict):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: an access line per call
    access_log: bool = True
    #: put the prompt (messages, prompt, input) in the access line; off by default
    log_prompts: bool = False
    #: Prometheus metrics on the admin listener's ``/metrics``
    metrics: bool = True
    tracing: TracingConfig = TracingConfig()
    #: per model group: the price per million input and output tokens
    prices: dict[str, Price] = {}
