"""Compressed request bodies: decoded and forwarded plain, or refused in the caller's dialect before any upstream call."""

from __future__ import annotations

import gzip
import zlib

import brotli
import httpx
import orjson
import pytest
import zstandard

from tests.servers import MockProvider, Sidecar

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "compressed hello"}]}
MESSAGES = {"model": "claude-sonnet", "max_tokens": 20, "messages": [{"role": "user", "content": "compressed hello"}]}


def _raw_deflate(data: bytes) -> bytes:
    encoder = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return encoder.compress(data) + encoder.flush()


ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "raw-deflate": _raw_deflate,
    "br": brotli.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
}


def _post(sidecar: Sidecar, dialect: str, content: bytes, encoding: str) -> httpx.Response:
    url = sidecar.openai_base + "/chat/completions" if dialect == "openai" else sidecar.anthropic_base + "/v1/messages"
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
    return httpx.post(url, content=content, headers=headers, timeout=10)


def _error_type(dialect: str, response: httpx.Response) -> str:
    body = response.json()
    if dialect == "anthropic":
        assert body["type"] == "error"
    return body["error"]["type"]


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_encoded_body_is_decoded_and_forwarded_plain(
    sidecar: Sidecar, mock_provider: MockProvider, dialect: str, coding: str
) -> None:
    payload = CHAT if dialect == "openai" else MESSAGES
    encoding = "deflate" if coding == "raw-deflate" else coding
    for _ in range(3):  # an upstream 500 each time would also open the circuit
        response = _post(sidecar, dialect, ENCODERS[coding](orjson.dumps(payload)), encoding)
        assert response.status_code == 200, response.text
    sent = mock_provider.requests()[-1]
    assert "content-encoding" not in sent["headers"]
    assert sent["body"]["messages"][0]["content"] == "compressed hello"
    assert mock_provider.calls() == 3


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest.mark.parametrize("encoding", ["compress", "gzip, gzip", "x-unknown"])
def test_unknown_encoding_is_415_before_any_upstream_call(
    sidecar: Sidecar, mock_provider: MockProvider, dialect: str, encoding: str
) -> None:
    payload = CHAT if dialect == "openai" else MESSAGES
    response = _post(sidecar, dialect, orjson.dumps(payload), encoding)
    assert response.status_code == 415
    assert _error_type(dialect, response) == "invalid_request_error"
    assert "gzip" in response.json()["error"]["message"]  # names what is supported
    assert mock_provider.calls() == 0


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_corrupt_encoding_is_400(sidecar: Sidecar, mock_provider: MockProvider, dialect: str) -> None:
    payload = CHAT if dialect == "openai" else MESSAGES
    for coding in ("gzip", "br"):
        whole = ENCODERS[coding](orjson.dumps(payload))
        for content in (b"not compressed at all", whole[: len(whole) // 2]):
            response = _post(sidecar, dialect, content, coding)
            assert response.status_code == 400, response.text
            assert _error_type(dialect, response) == "invalid_request_error"
    assert mock_provider.calls() == 0


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_zip_bomb_is_413_while_decoding(make_sidecar, mock_provider: MockProvider, coding: str) -> None:
    sidecar = make_sidecar(server={"max_body_bytes": 64 * 1024})
    text = b"a" * (50 * 1024 * 1024)  # 50 MB of one letter: under the 64 KB limit compressed
    bomb = ENCODERS[coding](b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + text + b'"}]}')
    del text
    assert len(bomb) < 64 * 1024
    for dialect in ("openai", "anthropic"):
        response = _post(sidecar, dialect, bomb, coding)
        assert response.status_code == 413
        assert _error_type(dialect, response) == "request_too_large"
    # Just below the limit once decoded still passes.
    small = ENCODERS[coding](orjson.dumps({**CHAT, "messages": [{"role": "user", "content": "b" * 60_000}]}))
    assert _post(sidecar, "openai", small, coding).status_code == 200
    assert mock_provider.calls() == 1
