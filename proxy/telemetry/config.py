"""The telemetry config section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class TelemetryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: an access line per call
    access_log: bool = True
