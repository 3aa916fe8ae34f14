"""Cache keys: a hash over the whole request, minus what cannot change the answer, namespaced by tenant.

A same call is the same dialect, operation and model group with the same body,
except for a short deny-list of fields that cannot change what the model answers
(``NOT_THE_ANSWER``: who asks, how it is delivered, whether the provider stores
it). Every other field splits the key, so a field the sidecar has never heard of
(a provider's new knob, embeddings' ``input_type``) costs at worst a miss, never
another call's answer. The body is dumped as JSON with sorted keys, so key order
and whitespace do not matter; a top-level number that is a whole float (``0.0``)
counts as the integer (``0``).

A key holds no secret and no header: the tenant part is either the configured
namespace or a hash of the caller's credential (when credentials pass through,
two callers with different keys must never share an entry).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

#: top-level request fields that cannot change the answer, in either dialect
NOT_THE_ANSWER = frozenset(
    {
        # who asks (abuse tracking) and how the provider files the call
        "user",
        "safety_identifier",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        # how the answer is delivered: a stored answer is replayed in either form
        "stream",
        "stream_options",
    }
)

_KEY_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
#: floats that are whole numbers and this small are written as integers (exact below 2**53)
_EXACT = 2.0**53


def fingerprint(payload: dict[str, Any]) -> dict[str, Any]:
    """The part of a request body that decides the answer: all of it but ``NOT_THE_ANSWER``."""
    out = {}
    for name, value in payload.items():
        if name in NOT_THE_ANSWER:
            continue
        # 0 and 0.0 ask for the same thing; JSON would spell them differently.
        if value.__class__ is float and value.is_integer() and -_EXACT < value < _EXACT:
            value = int(value)
        out[name] = value
    return out


def tenant(namespace: str, credential: str | None, per_credential: bool) -> str:
    """``namespace`` alone, or ``namespace`` plus a hash of the caller's credential."""
    if not per_credential:
        return namespace
    if not credential:
        return namespace + ".anonymous"
    return namespace + "." + hashlib.sha256(b"llm-sidecar-tenant:" + credential.encode()).hexdigest()[:24]


def scope_prefix(scope: str) -> bytes:
    """What the hash of every key in ``scope`` starts with (``request_key`` takes it, made once)."""
    return scope.encode() + b"\0"


def request_key(tenant_name: str, scope: str, payload: dict[str, Any]) -> str:
    """``llmsc:{tenant}:{hash}``; ``scope`` names the dialect, operation and model group."""
    return scoped_key(tenant_name, scope_prefix(scope), payload)


def scoped_key(tenant_name: str, prefix: bytes, payload: dict[str, Any]) -> str:
    """``request_key`` with the scope's ``scope_prefix`` made once for all its calls."""
    # The pipeline let in only bodies that write back (``proxy/request_body.py``).
    canonical = orjson.dumps(fingerprint(payload), option=_KEY_OPTIONS)
    digest = hashlib.blake2b(prefix + canonical, digest_size=20).hexdigest()
    return f"llmsc:{tenant_name}:{digest}"


def is_deterministic(payload: dict[str, Any], operation_path: str) -> bool:
    """Temperature 0 or a seed; embeddings have no sampling at all."""
    if operation_path.endswith("/embeddings"):
        return True
    temperature = payload.get("temperature")
    return temperature == 0 or payload.get("seed") is not None
