"""Cache keys: a hash over the fields that change an answer, namespaced by tenant.

The key is built from an explicit allow-list, so fields that do not change the
answer (``stream``, ``stream_options``, ``user``, ``metadata``, ``store``…) never
split it, and an unknown field can never leak into it. The fields are dumped as
JSON with sorted keys, so key order and whitespace in the request do not matter.

A key holds no secret and no header: the tenant part is either the configured
namespace or a hash of the caller's credential (when credentials pass through,
two callers with different keys must never share an entry).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

#: every request field that can change what the model answers, in either dialect
ANSWER_FIELDS = frozenset(
    {
        # what is asked
        "messages", "prompt", "input", "system", "instructions", "suffix", "previous_response_id",
        # how it is sampled
        "temperature", "top_p", "top_k", "n", "best_of", "seed", "stop", "stop_sequences",
        "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "echo",
        "max_tokens", "max_completion_tokens", "max_output_tokens",
        # what shape the answer takes
        "tools", "tool_choice", "functions", "function_call", "parallel_tool_calls",
        "response_format", "text", "modalities", "audio", "prediction", "reasoning", "reasoning_effort",
        "thinking", "include", "truncation", "web_search_options", "verbosity",
        "dimensions", "encoding_format",
        # in-cluster servers' own knobs (vLLM, Ollama) and Anthropic's server-side tools
        "min_p", "typical_p", "repetition_penalty", "length_penalty", "min_tokens", "ignore_eos",
        "use_beam_search", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
        "guided_decoding_backend", "structured_outputs", "chat_template", "chat_template_kwargs",
        "add_generation_prompt", "continue_final_message", "options", "format", "raw", "template",
        "mcp_servers", "container",
    }
)


def _canonical_number(value: Any) -> Any:
    # 0 and 0.0 ask for the same thing; JSON would spell them differently.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def fingerprint(payload: dict[str, Any]) -> dict[str, Any]:
    """The part of a request body that decides the answer."""
    return {k: _canonical_number(v) for k, v in payload.items() if k in ANSWER_FIELDS}


def tenant(namespace: str, credential: str | None, per_credential: bool) -> str:
    """``namespace`` alone, or ``namespace`` plus a hash of the caller's credential."""
    if not per_credential:
        return namespace
    if not credential:
        return namespace + ".anonymous"
    return namespace + "." + hashlib.sha256(b"llm-sidecar-tenant:" + credential.encode()).hexdigest()[:24]


def request_key(tenant_name: str, scope: str, payload: dict[str, Any]) -> str:
    """``llmsc:{tenant}:{hash}``; ``scope`` names the dialect, operation and model group."""
    canonical = orjson.dumps(fingerprint(payload), option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    digest = hashlib.blake2b(scope.encode() + b"\0" + canonical, digest_size=20).hexdigest()
    return f"llmsc:{tenant_name}:{digest}"


def is_deterministic(payload: dict[str, Any], operation_path: str) -> bool:
    """Temperature 0 or a seed; embeddings have no sampling at all."""
    if operation_path.endswith("/embeddings"):
        return True
    temperature = payload.get("temperature")
    return temperature == 0 or payload.get("seed") is not None
