"""The tests' own server starter: a port another server took between free_port() and the bind costs a retry, not a
failed test (CI: a webhook exited 'address already in use' and its test reached another test's server)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import servers
from tests.servers import MockProvider, SidecarProcess, default_config


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port a server of "another test" listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_a_taken_port_means_another_try_on_new_ports(
    tmp_path: Path, mock_provider: MockProvider, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race made certain: the first try's admin port is one another server holds.
    given: list[int] = []
    first_try = [servers.free_port(), taken_port]

    def free_port() -> int:
        given.append(first_try.pop(0) if first_try else real_free_port())
        return given[-1]

    real_free_port = servers.free_port
    monkeypatch.setattr(servers, "free_port", free_port)
    sidecar = SidecarProcess(default_config(mock_provider.url), tmp_path)
    try:
        assert len(given) == 4 and given[1] == taken_port  # two tries, two ports each
        assert [sidecar.port, sidecar.admin_port] == given[2:]
        assert httpx.get(sidecar.admin_url + "/readyz").status_code == 200
        assert sidecar.process.poll() is None
    finally:
        sidecar.stop()


def test_a_server_that_exits_for_another_reason_is_not_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given: list[int] = []
    real_free_port = servers.free_port
    monkeypatch.setattr(servers, "free_port", lambda: given.append(real_free_port()) or given[-1])
    config = default_config("http://127.0.0.1:1", cache={"backend": "no-such-backend"})
    with pytest.raises(AssertionError, match=r"(?s)exited with 2: .*cache\.backend"):
        SidecarProcess(config, tmp_path)
    assert len(given) == 2  # one try
