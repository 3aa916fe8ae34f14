"""aiohttp client errors become proxy errors in one place, and none slips through."""

from __future__ import annotations

import inspect

import aiohttp
import pytest

from proxy import errors
from proxy.upstream import map_client_error


def _instances() -> list[BaseException]:
    """One instance of every public aiohttp client error class."""
    connection_key = aiohttp.client_reqrep.ConnectionKey("h", 1, False, None, None, None, None)
    samples: list[BaseException] = []
    for name, cls in inspect.getmembers(aiohttp, inspect.isclass):
        if not issubclass(cls, aiohttp.ClientError):
            continue
        for args in ((connection_key, OSError(111, "refused")), (), ("message",), (None, ()), (b"a", b"b", "h", 1)):
            try:
                samples.append(cls(*args))
                break
            except Exception:
                continue
        else:
            pytest.fail(f"cannot build {name} for the test")
    return samples


@pytest.mark.parametrize("exc", _instances(), ids=lambda e: type(e).__name__)
def test_every_aiohttp_client_error_is_mapped(exc: BaseException) -> None:
    mapped = map_client_error(exc, "connect")
    assert isinstance(mapped, errors.UpstreamError)
    assert mapped.status in (502, 504)


def test_timeouts_are_504() -> None:
    assert isinstance(map_client_error(TimeoutError(), "first byte"), errors.UpstreamTimeout)
    assert map_client_error(TimeoutError(), "first byte").message == "upstream timed out (first byte)"


def test_anything_else_is_a_bug_not_an_upstream_error() -> None:
    with pytest.raises(TypeError):
        map_client_error(ValueError("x"), "connect")


def test_error_tree_statuses_and_types() -> None:
    for cls in (errors.BadRequest, errors.NotFound, errors.PayloadTooLarge, errors.Overloaded,
                errors.NoEndpointAvailable, errors.UpstreamConnectError, errors.UpstreamTimeout, errors.UpstreamBroken):
        error = cls("x")
        assert 400 <= error.status < 600 and error.type.endswith(("_error", "_large"))
        # Every class appears in the tree drawn in the module docstring.
        assert cls.__name__ in errors.__doc__
