"""A fake OpenAI/Anthropic provider for demos, tests and benchmarks.

It serves OpenAI under ``/v1/...`` and Anthropic at ``/v1/messages``, streaming and
not, with a deterministic answer derived from the prompt and realistic ``usage``.
Behaviour is programmable per model name (``PUT /_mock/behaviour/{model}``, or
``--behaviour`` on the command line) or per request with ``x-mock-*`` headers:

=====================  =========================================================
``x-mock-latency-ms``  wait before the response headers
``x-mock-ttft-ms``     wait before the first token (after the headers of a stream)
``x-mock-chunk-delay-ms`` wait between streamed chunks
``x-mock-chunks``      number of words in the answer (one per streamed chunk)
``x-mock-status``      answer with this error status instead
``x-mock-retry-after`` with a 429 (or any status): the ``Retry-After`` header
``x-mock-cut-after``   drop the connection after this many streamed chunks
``x-mock-echo-key``    1: echo the caller's key, as some gateways do: in an error's
                       message and ``x-echo-key`` header, else as the answer's first
                       word (streamed: cut across two writes)
``x-mock-truncate``    ``1``: end the stream cleanly just before its end marker
                       (``[DONE]``, ``message_stop``, ``response.completed``)
``x-mock-malformed``   send streamed frame number N (from 0) with its JSON cut short
``x-mock-empty``       ``1``: answer 200 with an empty body (streamed or not)
``x-mock-crlf``        ``1``: end lines with ``\r\n`` and send each frame in pieces
                       cut between the ``\r`` and the ``\n``
``x-mock-linger-ms``   wait between the last frame and the end of the stream
``x-mock-error-after`` send the provider's own error event (overloaded) in place of
                       streamed frame number N, and end the stream there
=====================  =========================================================

On the command line the same names go without ``x-mock-`` and with ``_`` for ``-``:
``--behaviour 'mock-gpt:truncate=1,chunk_delay_ms=5'``.

``GET /_mock/stats`` counts calls and concurrency per model (the most in flight at once, and the
most calls started within any ``?window=`` seconds, 60 by default: a provider's RPM), ``GET /_mock/requests``
shows the last requests' headers and bodies, ``POST /_mock/reset`` clears both (the peak in
flight restarts from the calls in flight).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import orjson
from aiohttp import web

from proxy.dialects.sse import format_frame

_VOCABULARY = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly brew "
    "strong coffee beside silver rivers under golden autumn skies and distant "
    "mountains echo with curious songs of patient engineers building careful systems"
).split()


@dataclass(frozen=True)
class Behaviour:
    latency_ms: float = 0.0
    ttft_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    chunks: int = 20
    status: int = 0
    retry_after: float | None = None
    cut_after: int = -1
    echo_key: int = 0
    truncate: int = 0
    malformed: int = -1
    empty: int = 0
    crlf: int = 0
    linger_ms: float = 0.0
    error_after: int = -1

    @classmethod
    def parse(cls, spec: str) -> tuple[str, Behaviour]:
        """``model:key=value,key=value`` as given to ``--behaviour``."""
        model, _, settings = spec.partition(":")
        values = dict(item.split("=", 1) for item in settings.split(",") if item)
        return model, cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: dict[str, Any], base: Behaviour | None = None) -> Behaviour:
        types = {f.name: f.type for f in fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in values.items():
            if key not in types:
                raise ValueError(f"unknown mock behaviour {key!r}")
            changes[key] = (
                float(value)
                if key in ("latency_ms", "ttft_ms", "chunk_delay_ms", "retry_after", "linger_ms")
                else int(value)
            )
        return replace(base or cls(), **changes)


class MockState:
    def __init__(self, behaviours: dict[str, Behaviour] | None = None) -> None:
        self.behaviours = dict(behaviours or {})
        self.calls: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()
        #: when each call started (monotonic seconds), per model: the busiest window's count comes from it
        self.started: dict[str, deque[float]] = {}
        self.requests: deque[dict[str, Any]] = deque(maxlen=50)

    def behaviour(self, model: str, request: web.Request) -> Behaviour:
        base = self.behaviours.get(model, Behaviour())
        overrides = {
            name[len("x-mock-") :].replace("-", "_"): value
            for name, value in request.headers.items()
            if name.lower().startswith("x-mock-")
        }
        return Behaviour.from_mapping(overrides, base) if overrides else base


STATE = web.AppKey("state", MockState)
#: call start times kept per model for ``max_in_window`` (a few minutes of a busy run)
_STARTS_KEPT = 100_000


# ---------------------------------------------------------------- answers


def prompt_text(body: dict[str, Any]) -> str:
    """The text of everything the caller sent, in either dialect."""
    parts: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            for item in value:
                collect(item)
        elif isinstance(value, dict):
            for key in ("text", "content", "input", "prompt"):
                if key in value:
                    collect(value[key])

    for key in ("system", "messages", "prompt", "input", "instructions"):
        collect(body.get(key))
    return " ".join(parts)


def answer_words(prompt: str, count: int) -> list[str]:
    digest = hashlib.sha256(prompt.encode()).digest()
    return [_VOCABULARY[(digest[i % 32] + i * 7) % len(_VOCABULARY)] for i in range(count)]


def count_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


@dataclass
class Answer:
    """What the mock decided to say; rendered in each dialect's format below."""

    model: str
    words: list[str]
    input_tokens: int
    truncated: bool
    tool: dict[str, Any] | None  # {"id", "name", "arguments"} when the answer is a tool call
    #: the caller asked for log probabilities (chat ``logprobs: true``): how many alternatives per token
    top_logprobs: int | None = None

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def pieces(self) -> list[str]:
        """The text as streamed: one piece per word, with its leading space."""
        return [word if i == 0 else " " + word for i, word in enumerate(self.words)]

    def logprobs(self, pieces: list[str]) -> dict[str, Any] | None:
        """Chat ``logprobs`` for these pieces of the text (made up, but stable), or None if not asked."""
        if self.top_logprobs is None:
            return None

        def entry(token: str, rank: int) -> dict[str, Any]:
            return {"token": token, "logprob": -0.25 * (rank + len(token) % 3), "bytes": list(token.encode())}

        return {
            "content": [
                {
                    **entry(p, 0),
                    "top_logprobs": [entry(p if r == 0 else p.upper(), r) for r in range(self.top_logprobs)],
                }
                for p in pieces
            ],
            "refusal": None,
        }

    @property
    def output_tokens(self) -> int:
        return len(self.words) if self.tool is None else count_tokens(orjson.dumps(self.tool["arguments"]).decode())


def decide(body: dict[str, Any], behaviour: Behaviour) -> Answer:
    prompt = prompt_text(body)
    count = behaviour.chunks
    limit = body.get("max_tokens") or body.get("max_completion_tokens") or body.get("max_output_tokens")
    truncated = isinstance(limit, int) and 0 < limit < count
    words = answer_words(prompt, limit if isinstance(limit, int) and truncated else count)
    tool = None
    tools = body.get("tools")
    if tools and body.get("tool_choice") not in ("none", {"type": "none"}):
        first = tools[0]
        name = first.get("name") or first.get("function", {}).get("name") or "tool"
        tool = {
            "id": "call_" + hashlib.sha256(prompt.encode()).hexdigest()[:24],
            "name": name,
            "arguments": {"query": " ".join(prompt.split()[:8])},
        }
    top = body.get("top_logprobs") if isinstance(body.get("top_logprobs"), int) else 0
    return Answer(
        str(body.get("model", "mock")),
        words,
        count_tokens(prompt),
        truncated,
        tool,
        top if body.get("logprobs") is True else None,
    )


def _id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


# ---------------------------------------------------------------- OpenAI


def openai_chat(answer: Answer) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None if answer.tool else answer.text, "refusal": None}
    finish = "length" if answer.truncated else "stop"
    if answer.tool:
        message["tool_calls"] = [
            {
                "id": answer.tool["id"],
                "type": "function",
                "function": {"name": answer.tool["name"], "arguments": orjson.dumps(answer.tool["arguments"]).decode()},
            }
        ]
        finish = "tool_calls"
    return {
        "id": _id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish,
                "logprobs": None if answer.tool else answer.logprobs(answer.pieces),
            }
        ],
        "usage": openai_usage(answer),
        "system_fingerprint": "fp_mock",
    }


def openai_usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }


def openai_chat_chunks(answer: Answer, include_usage: bool) -> list[bytes]:
    base = {
        "id": _id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": answer.model,
        "system_fingerprint": "fp_mock",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: dict[str, Any] | None = None) -> bytes:
        return format_frame(
            {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]}
        )

    frames = [chunk({"role": "assistant", "content": ""})]
    if answer.tool:
        arguments = orjson.dumps(answer.tool["arguments"]).decode()
        frames.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": answer.tool["id"],
                            "type": "function",
                            "function": {"name": answer.tool["name"], "arguments": ""},
                        }
                    ]
                }
            )
        )
        for piece in _pieces(arguments, 8):
            frames.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        frames.append(chunk({}, "tool_calls"))
    else:
        for piece in answer.pieces:
            frames.append(chunk({"content": piece}, logprobs=answer.logprobs([piece])))
        frames.append(chunk({}, "length" if answer.truncated else "stop"))
    if include_usage:
        frames.append(format_frame({**base, "choices": [], "usage": openai_usage(answer)}))
    frames.append(b"data: [DONE]\n\n")
    return frames


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def openai_completion(answer: Answer) -> dict[str, Any]:
    return {
        "id": _id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": answer.model,
        "choices": [
            {
                "index": 0,
                "text": answer.text,
                "finish_reason": "length" if answer.truncated else "stop",
                "logprobs": None,
            }
        ],
        "usage": openai_usage(answer),
    }


def openai_completion_chunks(answer: Answer) -> list[bytes]:
    base = {"id": _id("cmpl-"), "object": "text_completion", "created": int(time.time()), "model": answer.model}
    frames = [
        format_frame(
            {**base, "choices": [{"index": 0, "text": (" " if i else "") + w, "finish_reason": None, "logprobs": None}]}
        )
        for i, w in enumerate(answer.words)
    ]
    frames.append(
        format_frame({**base, "choices": [{"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}]})
    )
    return frames + [b"data: [DONE]\n\n"]


def openai_embeddings(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else [inputs]
    dimensions = int(body.get("dimensions") or 8)
    data = []
    # Like real embedding models that take one, ``input_type`` changes the vectors.
    kind = f"{body['input_type']}:" if body.get("input_type") else ""
    for index, item in enumerate(items):
        digest = hashlib.sha256(f"{kind}{item}".encode()).digest()
        vector = [(digest[i % 32] - 128) / 128 for i in range(dimensions)]
        encoded: Any = vector
        if body.get("encoding_format") == "base64":
            encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(count_tokens(str(i)) for i in items)
    return {
        "object": "list",
        "data": data,
        "model": body.get("model"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def openai_response(answer: Answer, response_id: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": answer.model,
        "output": [
            {
                "type": "message",
                "id": "msg_" + response_id[5:],
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": answer.text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "usage": {
            "input_tokens": answer.input_tokens,
            "output_tokens": answer.output_tokens,
            "total_tokens": answer.input_tokens + answer.output_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


def openai_response_events(answer: Answer) -> list[bytes]:
    """The Responses API's event sequence: the item and its text part are opened before
    the deltas and closed after them, as the SDK's ``responses.stream()`` expects."""
    response_id = _id("resp_")
    whole = openai_response(answer, response_id)
    item, part = whole["output"][0], whole["output"][0]["content"][0]
    ids = {"item_id": item["id"], "output_index": 0, "content_index": 0}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": {**whole, "status": "in_progress", "output": [], "usage": None}}),
        ("response.in_progress", {"response": {**whole, "status": "in_progress", "output": [], "usage": None}}),
        ("response.output_item.added", {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}}),
        ("response.content_part.added", {**ids, "part": {**part, "text": ""}}),
    ]
    for i, word in enumerate(answer.words):
        events.append(("response.output_text.delta", {**ids, "delta": word if i == 0 else " " + word, "logprobs": []}))
    events += [
        ("response.output_text.done", {**ids, "text": answer.text, "logprobs": []}),
        ("response.content_part.done", {**ids, "part": part}),
        ("response.output_item.done", {"output_index": 0, "item": item}),
        ("response.completed", {"response": whole}),
    ]
    return [
        format_frame({"type": name, "sequence_number": n, **data}, event=name) for n, (name, data) in enumerate(events)
    ]


# ---------------------------------------------------------------- Anthropic


def anthropic_message(answer: Answer) -> dict[str, Any]:
    if answer.tool:
        content = [
            {
                "type": "tool_use",
                "id": "toolu_" + answer.tool["id"][5:],
                "name": answer.tool["name"],
                "input": answer.tool["arguments"],
            }
        ]
        stop = "tool_use"
    else:
        content = [{"type": "text", "text": answer.text}]
        stop = "max_tokens" if answer.truncated else "end_turn"
    return {
        "id": _id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": answer.input_tokens, "output_tokens": answer.output_tokens},
    }


def anthropic_events(answer: Answer) -> list[bytes]:
    full = anthropic_message(answer)
    start = {
        **full,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": answer.input_tokens, "output_tokens": 1},
    }
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"message": start})]
    if answer.tool:
        block = full["content"][0]
        events.append(("content_block_start", {"index": 0, "content_block": {**block, "input": {}}}))
        for piece in _pieces(orjson.dumps(answer.tool["arguments"]).decode(), 8):
            events.append(
                ("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": piece}})
            )
    else:
        events.append(("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}))
        events.append(("ping", {}))
        for i, word in enumerate(answer.words):
            events.append(
                (
                    "content_block_delta",
                    {"index": 0, "delta": {"type": "text_delta", "text": word if i == 0 else " " + word}},
                )
            )
    events.append(("content_block_stop", {"index": 0}))
    events.append(
        (
            "message_delta",
            {
                "delta": {"stop_reason": full["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": answer.output_tokens},
            },
        )
    )
    events.append(("message_stop", {}))
    return [format_frame({"type": name, **data}, event=name) for name, data in events]


# ---------------------------------------------------------------- serving


def _error(dialect: str, status: int, message: str) -> bytes:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error")
    if dialect == "anthropic":
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})


def _caller_key(request: web.Request) -> str:
    value = request.headers.get("x-api-key") or request.headers.get("Authorization") or ""
    return value.removeprefix("Bearer ")


def _faulty(frames: list[bytes], behaviour: Behaviour) -> list[bytes]:
    """The frames with the behaviour's faults in: a frame cut short, the end marker gone."""
    if behaviour.malformed < 0 and not behaviour.truncate:
        return frames
    frames = list(frames)
    if 0 <= behaviour.malformed < len(frames):
        frame = frames[behaviour.malformed]
        frames[behaviour.malformed] = frame[: frame.rindex(b"\n\n") - 5] + b"\n\n"
    if behaviour.truncate:
        frames.pop()  # every stream here ends with its end marker's frame
    return frames


def _error_event(kind: str) -> bytes:
    """The provider's own error event in a stream, as a provider sends it when overloaded mid-answer."""
    message = "mock overloaded mid-stream"
    if kind == "messages":
        return format_frame({"type": "error", "error": {"type": "overloaded_error", "message": message}}, event="error")
    if kind == "responses":
        return format_frame({"type": "error", "code": "server_error", "message": message, "param": None}, event="error")
    return format_frame({"error": {"message": message, "type": "server_error", "param": None, "code": None}})


def _crlf_pieces(frame: bytes) -> list[bytes]:
    # Each piece ends in a \r whose \n starts the next piece.
    first, *rest = frame.replace(b"\n", b"\r\n").split(b"\n")
    return [first, *(b"\n" + piece for piece in rest)]


async def _stream(request: web.Request, frames: list[bytes], behaviour: Behaviour) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    if behaviour.ttft_ms:
        await asyncio.sleep(behaviour.ttft_ms / 1000)
    key = _caller_key(request).encode() if behaviour.echo_key else b""
    try:
        for index, frame in enumerate(_faulty(frames, behaviour)):
            if index == behaviour.cut_after:
                assert request.transport is not None
                request.transport.close()
                return response
            if index and behaviour.chunk_delay_ms:
                await asyncio.sleep(behaviour.chunk_delay_ms / 1000)
            if key and key in frame:  # the echoed key, cut in two: the reader sees it across two chunks
                middle = frame.index(key) + len(key) // 2
                await response.write(frame[:middle])
                await asyncio.sleep(0.05)
                frame = frame[middle:]
            if not behaviour.crlf:
                await response.write(frame)
                continue
            for piece in _crlf_pieces(frame):
                await response.write(piece)
                await asyncio.sleep(0.002)  # one network chunk per piece: the reader gets each alone
        if behaviour.linger_ms:
            await asyncio.sleep(behaviour.linger_ms / 1000)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client left before the end: a provider's everyday, not an error
    return response


def _shape_problem(body: Any) -> str | None:
    """Why a provider would refuse the shape of what the mock reads from a body (a 400), or ``None``."""
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(tool, dict) for tool in tools)):
        return "tools must be a list of objects"
    if body.get("stream_options") is not None and not isinstance(body["stream_options"], dict):
        return "stream_options must be an object"
    return None


def _handler(dialect: str, kind: str):
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return web.Response(status=400, body=_error(dialect, 400, "invalid JSON"), content_type="application/json")
        if problem := _shape_problem(body):
            return web.Response(status=400, body=_error(dialect, 400, problem), content_type="application/json")
        model = str(body.get("model", ""))
        state.requests.append(
            {"path": request.path, "headers": {k.lower(): v for k, v in request.headers.items()}, "body": body}
        )
        state.calls[model] += 1
        state.in_flight[model] += 1
        state.max_in_flight[model] = max(state.max_in_flight[model], state.in_flight[model])
        state.started.setdefault(model, deque(maxlen=_STARTS_KEPT)).append(time.monotonic())
        try:
            behaviour = state.behaviour(model, request)
            if behaviour.latency_ms:
                await asyncio.sleep(behaviour.latency_ms / 1000)
            if behaviour.status:
                # Like the real providers, errors carry the provider's own request id.
                headers = {"x-request-id": _id("req_")}
                if behaviour.retry_after is not None:
                    headers["Retry-After"] = f"{behaviour.retry_after:g}"
                message = f"mock error {behaviour.status}"
                if behaviour.echo_key:
                    headers["x-echo-key"] = _caller_key(request)
                    message += f": invalid key {_caller_key(request)}"
                return web.Response(
                    status=behaviour.status,
                    headers=headers,
                    content_type="application/json",
                    body=_error(dialect, behaviour.status, message),
                )
            return await _answer(request, kind, body, behaviour)
        finally:
            state.in_flight[model] -= 1

    return handle


async def _answer(request: web.Request, kind: str, body: dict[str, Any], behaviour: Behaviour) -> web.StreamResponse:
    if kind == "embeddings":
        return web.json_response(openai_embeddings(body), dumps=_dumps)
    if kind == "count_tokens":
        return web.json_response({"input_tokens": count_tokens(prompt_text(body))}, dumps=_dumps)
    if behaviour.empty:
        content_type = "text/event-stream" if body.get("stream") is True else "application/json"
        return web.Response(status=200, content_type=content_type)
    answer = decide(body, behaviour)
    if behaviour.echo_key:
        answer.words.insert(0, _caller_key(request))
    if body.get("stream") is True:
        frames = {
            "chat": lambda: openai_chat_chunks(answer, bool((body.get("stream_options") or {}).get("include_usage"))),
            "completions": lambda: openai_completion_chunks(answer),
            "responses": lambda: openai_response_events(answer),
            "messages": lambda: anthropic_events(answer),
        }[kind]()
        if 0 <= behaviour.error_after < len(frames):
            frames = [*frames[: behaviour.error_after], _error_event(kind)]
        return await _stream(request, frames, behaviour)
    if behaviour.ttft_ms:
        await asyncio.sleep(behaviour.ttft_ms / 1000)
    document = {
        "chat": lambda: openai_chat(answer),
        "completions": lambda: openai_completion(answer),
        "responses": lambda: openai_response(answer, _id("resp_")),
        "messages": lambda: anthropic_message(answer),
    }[kind]()
    return web.json_response(document, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


async def list_models(request: web.Request) -> web.Response:
    models = sorted(set(request.app[STATE].behaviours) | {"mock-gpt", "mock-claude"})
    return web.json_response(
        {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "mock"} for m in models]}
    )


async def stats(request: web.Request) -> web.Response:
    """Calls, in flight now and at most, and the most calls started within any ``?window=`` seconds (60)."""
    state = request.app[STATE]
    try:
        window = float(request.query.get("window", 60))
    except ValueError:
        return web.json_response({"error": "window: a number of seconds"}, status=400)
    return web.json_response(
        {
            "calls": dict(state.calls),
            "in_flight": dict(state.in_flight),
            "max_in_flight": dict(state.max_in_flight),
            "total_calls": sum(state.calls.values()),
            "window_s": window,
            "max_in_window": {model: busiest(times, window) for model, times in state.started.items()},
        }
    )


def busiest(times: Iterable[float], window: float) -> int:
    """The most of the sorted ``times`` that fall within any ``window`` seconds (two pointers)."""
    kept = list(times)
    most = start = 0
    for end, time_at in enumerate(kept):
        while time_at - kept[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most


async def recent_requests(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[STATE].requests), dumps=_dumps)


async def reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    # Calls in flight stay counted (they are still running): the peak restarts from them.
    state.calls.clear()
    state.max_in_flight = Counter(state.in_flight)
    state.started.clear()
    state.requests.clear()
    return web.json_response({"reset": True})


async def set_behaviour(request: web.Request) -> web.Response:
    state = request.app[STATE]
    model = request.match_info["model"]
    try:
        state.behaviours[model] = Behaviour.from_mapping(await request.json())
    except (ValueError, TypeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(asdict(state.behaviours[model]))


def build_mock_app(behaviours: dict[str, Behaviour] | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE] = MockState(behaviours)
    app.router.add_post("/v1/chat/completions", _handler("openai", "chat"))
    app.router.add_post("/v1/completions", _handler("openai", "completions"))
    app.router.add_post("/v1/embeddings", _handler("openai", "embeddings"))
    app.router.add_post("/v1/responses", _handler("openai", "responses"))
    app.router.add_post("/v1/messages", _handler("anthropic", "messages"))
    app.router.add_post("/v1/messages/count_tokens", _handler("anthropic", "count_tokens"))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/_mock/stats", stats)
    app.router.add_get("/_mock/requests", recent_requests)
    app.router.add_post("/_mock/reset", reset)
    app.router.add_put("/_mock/behaviour/{model}", set_behaviour)
    return app
