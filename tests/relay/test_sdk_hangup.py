"""A client that hangs up right after the end marker loses nothing and is no error."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.cache.conftest import cache_config
from tests.relay.helpers import wait_for
from tests.servers import Sidecar


class Records(logging.Handler):
    """Every record of level WARNING or above, of the sidecar's and aiohttp's loggers."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("llm_sidecar", "aiohttp", "asyncio")):
            self.records.append(record)


@pytest.fixture
def warnings_logged() -> Iterator[Records]:
    handler = Records()
    root, sidecar_logger = logging.getLogger(), logging.getLogger("llm_sidecar")
    saved = sidecar_logger.propagate
    sidecar_logger.propagate = True
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    sidecar_logger.propagate = saved


def test_sdk_closing_after_done_keeps_every_answer(make_sidecar, mock_provider, warnings_logged) -> None:
    """The openai SDK closes its connection as soon as it reads ``[DONE]``: 48 distinct
    streamed calls, each stored, none logged as an error.

    The upstream lingers a moment between ``[DONE]`` and the end of its response (real
    ones may), so each client hangs up while the sidecar still reads the upstream.
    """
    mock_provider.set_behaviour("mock-gpt", linger_ms=30)
    sidecar: Sidecar = make_sidecar(config=cache_config(mock_provider.url))
    client = sidecar.openai()
    calls = 48
    for n in range(calls):
        stream = client.chat.completions.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": f"question {n}"}]
        )
        with stream:
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text
    stats = sidecar.pipeline.cache.stats
    assert wait_for(lambda: stats.stores == calls), (stats.stores, stats.not_stored)
    assert stats.not_stored == 0
    assert [r.getMessage() for r in warnings_logged.records] == []
    # Every one of them is a hit now, and the upstream saw each question once.
    for n in range(calls):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": f"question {n}"}]
        )
        assert raw.headers["x-llm-sidecar-cache"] == "hit"
        list(raw.parse())
    assert mock_provider.calls() == calls
