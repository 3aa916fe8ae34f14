"""Telemetry: what each call did, recorded once when it ends."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from proxy.telemetry.config import TelemetryConfig
from proxy.telemetry.logs import ACCESS

if TYPE_CHECKING:
    from proxy.call import Call


class Telemetry:
    def __init__(self, config: TelemetryConfig) -> None:
        self.config = config

    def finish(self, call: Call) -> None:
        """Record one ended call: exactly once per call, whatever its outcome."""
        if not self.config.access_log or not ACCESS.isEnabledFor(logging.INFO):
            return
        now = time.perf_counter()
        fields = {
            "request_id": call.request_id,
            "dialect": call.dialect.name,
            "model_group": call.model_group,
            "endpoint": call.endpoint,
            "outcome": call.outcome,
            "status": call.status,
            "cache": call.cache_status,
            "attempts": call.attempts,
            "stream": call.stream,
            "latency_ms": round((now - call.started) * 1000, 2),
            "ttfb_ms": round((call.first_byte_at - call.started) * 1000, 2) if call.first_byte_at else None,
            "error_type": call.error_type,
            **call.usage,
        }
        ACCESS.info("call", extra={"fields": fields})
