"""Cross-dialect fallback: OpenAI chat completions ⇄ Anthropic messages.

When a call falls back to an endpoint of the other dialect, ``Translation``
rewrites the request into the endpoint's dialect and the answer back into the
caller's, streamed events included, so the caller's SDK sees its own dialect:

=====================  ===============================  ==============================
concept                OpenAI chat                      Anthropic messages
=====================  ===============================  ==============================
instructions           ``system``/``developer`` message ``system``
text                   ``content`` (string or parts)    ``text`` blocks
images                 ``image_url`` parts              ``image`` blocks (base64 or url)
tool definitions       ``tools[].function``             ``tools[]`` with ``input_schema``
tool calls             ``tool_calls`` (JSON string)     ``tool_use`` blocks (object)
tool results           ``tool`` role messages           ``tool_result`` blocks (user)
JSON output             ``response_format`` json_schema  ``output_config.format``
stop reasons           stop, length, tool_calls,        end_turn/stop_sequence, max_tokens,
                       content_filter                   tool_use, refusal
usage                  prompt/completion_tokens,        input/output_tokens,
                       ``cached_tokens``                ``cache_read_input_tokens``
stream                 ``chat.completion.chunk`` + DONE message_start … message_stop
=====================  ===============================  ==============================

Only ``/chat/completions`` ⇄ ``/v1/messages`` translate; other operations
(embeddings, legacy completions, responses, token counts) only go to endpoints
of the caller's own dialect. A call is translated only when all of it can be:
a field, value or content block with no counterpart (``logprobs``, ``n`` > 1,
penalties, ``top_k``, extended thinking, documents …) is a ``BadRequest`` naming
it, raised before the endpoint is called. Fields that cannot change the answer
(``metadata``, ``store``, ``service_tier`` …) and best-effort hints (``seed``) are
left out. ``docs/routing.md`` has the table users read.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from proxy.dialects.sse import FrameSplitter, format_frame, parse_frame
from proxy.errors import BadRequest

#: (caller dialect, caller path, endpoint dialect) -> endpoint path
_PATHS = {
    ("openai", "/chat/completions", "anthropic"): "/v1/messages",
    ("anthropic", "/v1/messages", "openai"): "/chat/completions",
}
#: Anthropic requires ``max_tokens``; OpenAI callers often leave it out
DEFAULT_MAX_TOKENS = 4096

_TO_OPENAI_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_TO_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


#: per caller dialect: fields left out of a translated call, since they cannot change the answer
#: (who asks, how the provider files the call) or are only a best-effort hint (``seed``)
_LEFT_OUT = {
    "openai": frozenset({"metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key", "seed"}),
    "anthropic": frozenset({"service_tier", "cache_control"}),
}
#: fields that ask for nothing at these values (and at null); any other value has no counterpart
_NEUTRAL: dict[str, dict[str, tuple[Any, ...]]] = {
    "openai": {
        "n": (1,),
        "logprobs": (False,),
        "top_logprobs": (0,),
        "presence_penalty": (0,),
        "frequency_penalty": (0,),
        "logit_bias": ({},),
        "modalities": (["text"],),
    },
    "anthropic": {"thinking": ({"type": "disabled"},)},
}
#: the fields each direction reads and restates
_READ = {
    "openai": frozenset(
        {
            "model",
            "messages",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "stop",
            "stream",
            "stream_options",
            "user",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "response_format",
        }
    ),
    "anthropic": frozenset(
        {
            "model",
            "messages",
            "system",
            "max_tokens",
            "temperature",
            "top_p",
            "stop_sequences",
            "stream",
            "metadata",
            "tools",
            "tool_choice",
            "output_config",
        }
    ),
}
#: OpenAI takes at most this many stop sequences
_OPENAI_MAX_STOPS = 4


class Untranslatable(BadRequest):
    """The call asks for something the other dialect cannot express (the caller's 400)."""

    def __init__(self, target: str, what: str, param: str | None) -> None:
        names = {"openai": "an OpenAI", "anthropic": "an Anthropic"}
        super().__init__(f"this call cannot be translated for {names[target]} endpoint: {what}", param=param)


def check_fields(caller: str, target: str, payload: dict[str, Any]) -> None:
    """Refuse a field the translation would have to drop although it changes the answer."""
    read, left_out, neutral = _READ[caller], _LEFT_OUT[caller], _NEUTRAL[caller]
    for name, value in payload.items():
        if name in read or name in left_out or value is None or value in neutral.get(name, ()):
            continue
        raise Untranslatable(target, f"`{name}` has no counterpart there", name)


def target_path(caller: str, path: str, target: str) -> str | None:
    """The endpoint's path for a call of ``caller`` dialect on ``path``; None if it cannot translate."""
    if caller == target:
        return path
    return _PATHS.get((caller, path, target))


class TranslationError(ValueError):
    """An answer that cannot be read in the endpoint's dialect (the router treats it as broken)."""


class Translation:
    """One attempt's translation between the caller's dialect and the endpoint's."""

    __slots__ = ("caller", "target", "path")

    def __init__(self, caller: str, target: str, path: str) -> None:
        self.caller = caller
        self.target = target
        self.path = path

    def request(self, payload: dict[str, Any], model: str) -> bytes:
        """The call restated for the endpoint; a malformed or untranslatable call is the caller's error (400)."""
        check_fields(self.caller, self.target, payload)
        try:
            if self.caller == "openai":
                return orjson.dumps(openai_to_anthropic_request(payload, model))
            return orjson.dumps(anthropic_to_openai_request(payload, model))
        except Untranslatable:
            raise
        except (AttributeError, TypeError, ValueError, KeyError) as exc:
            # The translators read well-formed calls; anything else cannot be restated.
            raise BadRequest(
                f"the request cannot be translated for a {self.target} endpoint: "
                f"a field has an unexpected shape ({type(exc).__name__})"
            ) from None

    def response(self, body: bytes) -> bytes:
        document = _loads(body)
        # Checked, not made up: an answer with no content or choices would translate to an empty
        # one that looks complete (and would be stored).
        if self.caller == "openai" and not isinstance(document.get("content"), list):
            raise TranslationError("the upstream answer has no content list")
        if self.caller == "anthropic" and not (isinstance(choices := document.get("choices"), list) and choices):
            raise TranslationError("the upstream answer has no choices")
        try:
            if self.caller == "openai":
                return orjson.dumps(anthropic_to_openai_response(document))
            return orjson.dumps(openai_to_anthropic_response(document))
        except (AttributeError, TypeError, ValueError, KeyError) as exc:
            # The translators read well-formed answers: anything else is a broken one.
            raise TranslationError(f"the upstream answer has an unexpected shape ({type(exc).__name__})") from None

    def error(self, body: bytes) -> bytes:
        """An upstream error body restated in the caller's dialect (message and type kept)."""
        try:
            document = orjson.loads(body)
            error = document.get("error") or {}
            message, kind = str(error.get("message", "")), str(error.get("type", "api_error"))
        except (orjson.JSONDecodeError, AttributeError):
            message, kind = body.decode(errors="replace")[:500], "api_error"
        if self.caller == "openai":
            return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})

    def stream(self, payload: dict[str, Any]) -> StreamTranslator:
        if self.caller == "openai":
            include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
            return AnthropicToOpenAIStream(include_usage)
        return OpenAIToAnthropicStream()


def _loads(body: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise TranslationError(f"upstream answer is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise TranslationError("upstream answer is not a JSON object")
    return document


# ------------------------------------------------------------------ requests


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") in ("text", "input_text")
        )
    return ""


def _openai_part_to_block(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "text": part.get("text", "")}
    if kind == "image_url":
        url = (part.get("image_url") or {}).get("url", "")
        if url.startswith("data:") and ";base64," in url:
            media, data = url[5:].split(";base64,", 1)
            return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise Untranslatable("anthropic", f"a `{kind}` content part has no counterpart there", "messages")


def _json_output(response_format: Any) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` as Anthropic's ``output_config.format``; None for plain text."""
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            return {"type": "json_schema", "schema": schema}
    raise Untranslatable(
        "anthropic",
        f"`response_format` {kind!r} has no counterpart there (JSON output needs a schema: use type json_schema)",
        "response_format",
    )


def openai_to_anthropic_request(payload: dict[str, Any], model: str) -> dict[str, Any]:
    system: list[str] = []
    messages: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        # Anthropic wants user and assistant turns to alternate: merge neighbours.
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        elif blocks:
            messages.append({"role": role, "content": blocks})

    for message in payload.get("messages") or []:
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise Untranslatable("anthropic", f"a `{role}` message has no counterpart there", "messages")
        if role in ("system", "developer"):
            system.append(_text_of(content))
        elif role == "tool":
            add(
                "user",
                [{"type": "tool_result", "tool_use_id": message.get("tool_call_id", ""), "content": _text_of(content)}],
            )
        else:
            blocks: list[dict[str, Any]] = []
            if isinstance(content, str):
                if content:
                    blocks.append({"type": "text", "text": content})
            elif isinstance(content, list):
                blocks.extend(map(_openai_part_to_block, content))
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                try:
                    arguments = orjson.loads(function.get("arguments") or "{}")
                except orjson.JSONDecodeError:
                    arguments = {}
                blocks.append(
                    {"type": "tool_use", "id": call.get("id", ""), "name": function.get("name", ""), "input": arguments}
                )
            add("assistant" if role == "assistant" else "user", blocks)

    out: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": payload.get("max_completion_tokens") or payload.get("max_tokens") or DEFAULT_MAX_TOKENS,
    }
    if system:
        out["system"] = "\n\n".join(system)
    if payload.get("temperature") is not None:
        temperature = float(payload["temperature"])
        if temperature > 1:  # OpenAI allows up to 2
            raise Untranslatable("anthropic", "`temperature` above 1 has no counterpart there", "temperature")
        out["temperature"] = temperature
    if payload.get("top_p") is not None:
        out["top_p"] = payload["top_p"]
    stop = payload.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if payload.get("stream") is True:
        out["stream"] = True
    if payload.get("stream_options") is not None and not isinstance(payload["stream_options"], dict):
        raise BadRequest("`stream_options` must be an object", param="stream_options")
    if payload.get("user"):
        out["metadata"] = {"user_id": str(payload["user"])}
    if payload.get("response_format") is not None and (output := _json_output(payload["response_format"])):
        out["output_config"] = {"format": output}
    tools = payload.get("tools")
    if tools:
        if any(t.get("type", "function") != "function" for t in tools):
            raise Untranslatable("anthropic", "only `function` tools have a counterpart there", "tools")
        out["tools"] = [
            {
                "name": f.get("name", ""),
                "description": f.get("description", ""),
                "input_schema": f.get("parameters") or {"type": "object", "properties": {}},
            }
            for f in (t.get("function") or {} for t in tools)
        ]
        choice = payload.get("tool_choice")
        converted: dict[str, Any] | None = None
        if choice == "auto":
            converted = {"type": "auto"}
        elif choice == "required":
            converted = {"type": "any"}
        elif choice == "none":
            converted = {"type": "none"}
        elif isinstance(choice, dict) and choice.get("type") == "function":
            converted = {"type": "tool", "name": (choice.get("function") or {}).get("name", "")}
        elif choice is not None:
            raise Untranslatable("anthropic", "this `tool_choice` has no counterpart there", "tool_choice")
        if payload.get("parallel_tool_calls") is False:
            converted = {**(converted or {"type": "auto"}), "disable_parallel_tool_use": True}
        if converted is not None:
            out["tool_choice"] = converted
    return out


def _anthropic_block_to_part(block: dict[str, Any]) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": block.get("text", "")}
    if kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            return {
                "type": "image_url",
                "image_url": {"url": f"data:{source.get('media_type')};base64,{source.get('data')}"},
            }
        if source.get("type") == "url":
            return {"type": "image_url", "image_url": {"url": source.get("url", "")}}
        kind = f"{source.get('type')} image"
    raise Untranslatable("openai", f"a `{kind}` content block has no counterpart there", "messages")


#: blocks of an assistant turn that only Anthropic reads back; an OpenAI model does without them
_ANTHROPIC_ONLY_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def _tool_result_text(content: Any) -> str:
    if isinstance(content, list) and any(b.get("type") != "text" for b in content):
        raise Untranslatable("openai", "a tool result holding more than text has no counterpart there", "messages")
    return _text_of(content)


def _response_format(output_config: dict[str, Any]) -> dict[str, Any] | None:
    """Anthropic's ``output_config`` as OpenAI's ``response_format``; None when it asks for nothing."""
    for name, value in output_config.items():
        if name != "format" and value is not None:
            raise Untranslatable("openai", f"`output_config.{name}` has no counterpart there", "output_config")
    output = output_config.get("format")
    if output is None:
        return None
    if output.get("type") != "json_schema" or not isinstance(output.get("schema"), dict):
        raise Untranslatable("openai", "this `output_config.format` has no counterpart there", "output_config")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": output["schema"], "strict": True}}


def anthropic_to_openai_request(payload: dict[str, Any], model: str) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    system = payload.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of(system)})
    for message in payload.get("messages") or []:
        role, content = message.get("role"), message.get("content")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
            continue
        blocks = content if isinstance(content, list) else []
        if role == "assistant":
            for block in blocks:
                if block.get("type") not in ("text", "tool_use", *_ANTHROPIC_ONLY_BLOCKS):
                    raise Untranslatable(
                        "openai", f"a `{block.get('type')}` content block has no counterpart there", "messages"
                    )
            text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
            calls = [
                {
                    "id": b.get("id", ""),
                    "type": "function",
                    "function": {"name": b.get("name", ""), "arguments": orjson.dumps(b.get("input") or {}).decode()},
                }
                for b in blocks
                if b.get("type") == "tool_use"
            ]
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                entry["tool_calls"] = calls
            messages.append(entry)
            continue
        # Tool results become ``tool`` messages, which OpenAI wants right after the call.
        for block in blocks:
            if block.get("type") == "tool_result":
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": block.get("tool_use_id", ""),
                        "content": _tool_result_text(block.get("content")),
                    }
                )
        parts = [_anthropic_block_to_part(b) for b in blocks if b.get("type") != "tool_result"]
        if parts:
            only_text = all(p["type"] == "text" for p in parts)
            messages.append({"role": "user", "content": "".join(p["text"] for p in parts) if only_text else parts})

    out: dict[str, Any] = {"model": model, "messages": messages}
    if payload.get("max_tokens") is not None:
        out["max_tokens"] = payload["max_tokens"]
    for key in ("temperature", "top_p"):
        if payload.get(key) is not None:
            out[key] = payload[key]
    if payload.get("stop_sequences"):
        if len(payload["stop_sequences"]) > _OPENAI_MAX_STOPS:
            raise Untranslatable(
                "openai", f"more than {_OPENAI_MAX_STOPS} `stop_sequences` have no counterpart there", "stop_sequences"
            )
        out["stop"] = payload["stop_sequences"]
    if payload.get("stream") is True:
        out["stream"] = True
        # Anthropic streams always carry usage; ask the OpenAI side for it too.
        out["stream_options"] = {"include_usage": True}
    user = (payload.get("metadata") or {}).get("user_id")
    if user:
        out["user"] = user
    if payload.get("output_config") is not None and (response_format := _response_format(payload["output_config"])):
        out["response_format"] = response_format
    tools = payload.get("tools")
    if tools:
        if any(t.get("type") not in (None, "custom") for t in tools):
            raise Untranslatable(
                "openai", "only client tools (with an `input_schema`) have a counterpart there", "tools"
            )
        out["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.get("name", ""),
                    "description": t.get("description", ""),
                    "parameters": t.get("input_schema") or {},
                },
            }
            for t in tools
        ]
        choice = payload.get("tool_choice") or {}
        kind = choice.get("type")
        if kind == "auto":
            out["tool_choice"] = "auto"
        elif kind == "any":
            out["tool_choice"] = "required"
        elif kind == "none":
            out["tool_choice"] = "none"
        elif kind == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name", "")}}
        elif kind is not None:
            raise Untranslatable("openai", "this `tool_choice` has no counterpart there", "tool_choice")
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    return out


# ------------------------------------------------------------------ whole answers


def anthropic_to_openai_response(message: dict[str, Any]) -> dict[str, Any]:
    blocks = message.get("content") or []
    text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    calls = [
        {
            "id": b.get("id", ""),
            "type": "function",
            "function": {"name": b.get("name", ""), "arguments": orjson.dumps(b.get("input") or {}).decode()},
        }
        for b in blocks
        if b.get("type") == "tool_use"
    ]
    reply: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else ""), "refusal": None}
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": "chatcmpl-" + str(message.get("id", uuid.uuid4().hex)).removeprefix("msg_"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": _TO_OPENAI_FINISH.get(message.get("stop_reason") or "end_turn", "stop"),
            }
        ],
        "usage": _openai_usage(message.get("usage") or {}),
    }


def _openai_usage(usage: dict[str, Any]) -> dict[str, Any]:
    # Anthropic counts cache reads and writes apart from input_tokens; OpenAI's prompt_tokens
    # holds all three, the cache reads named again in its details.
    prompt = sum(
        int(usage.get(k) or 0) for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    )
    completion = int(usage.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": int(usage.get("cache_read_input_tokens") or 0)},
    }


def _anthropic_usage(usage: dict[str, Any]) -> dict[str, int]:
    """OpenAI's usage as Anthropic counts it: cached prompt tokens apart from ``input_tokens``."""
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    out = {"output_tokens": int(usage.get("completion_tokens") or 0)}
    if usage.get("prompt_tokens") is not None:
        out["input_tokens"] = int(usage["prompt_tokens"]) - cached
        out["cache_read_input_tokens"] = cached
    return out


def openai_to_anthropic_response(completion: dict[str, Any]) -> dict[str, Any]:
    choice = (completion.get("choices") or [{}])[0]
    reply = choice.get("message") or {}
    blocks: list[dict[str, Any]] = []
    if reply.get("content"):
        blocks.append({"type": "text", "text": reply["content"]})
    for call in reply.get("tool_calls") or []:
        function = call.get("function") or {}
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = {}
        blocks.append(
            {"type": "tool_use", "id": call.get("id", ""), "name": function.get("name", ""), "input": arguments}
        )
    usage = completion.get("usage") or {}
    return {
        "id": "msg_" + str(completion.get("id", uuid.uuid4().hex)).removeprefix("chatcmpl-"),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model", ""),
        "content": blocks,
        "stop_reason": _TO_ANTHROPIC_STOP.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": {"input_tokens": 0, **_anthropic_usage(usage)},
    }


# ------------------------------------------------------------------ streams


class StreamTranslator:
    """Turns the endpoint's SSE bytes into the caller's, frame by frame, as they arrive."""

    def __init__(self) -> None:
        self._frames = FrameSplitter()

    def feed(self, chunk: bytes) -> bytes:
        out = bytearray()
        for frame in self._frames.feed(chunk):
            event, data = parse_frame(frame)
            if not data:
                continue
            try:
                out += self.frame(event, data)
            except TranslationError:
                raise
            except (AttributeError, TypeError, ValueError, KeyError) as exc:
                # A frame of a shape the translator does not read: a malformed event, not a crash.
                raise TranslationError(
                    f"the upstream sent an event of an unexpected shape ({type(exc).__name__})"
                ) from None
        return bytes(out)

    def frame(self, event: str | None, data: bytes) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        """The upstream stream ended cleanly; close what the caller's dialect expects closed."""
        return b""


class AnthropicToOpenAIStream(StreamTranslator):
    """Anthropic ``message_*``/``content_block_*`` events → OpenAI ``chat.completion.chunk`` frames."""

    def __init__(self, include_usage: bool) -> None:
        super().__init__()
        self.include_usage = include_usage
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.model = ""
        self.created = int(time.time())
        self.usage: dict[str, Any] = {}
        #: Anthropic content block index → OpenAI tool call index
        self.tools: dict[int, int] = {}
        self.done = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return format_frame(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }
        )

    def frame(self, event: str | None, data: bytes) -> bytes:
        document = _loads(data)
        kind = document.get("type") or event
        if kind == "message_start":
            message = document.get("message") or {}
            self.id = "chatcmpl-" + str(message.get("id", "")).removeprefix("msg_")
            self.model = message.get("model", "")
            self.usage.update(message.get("usage") or {})
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = document.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self.tools[document.get("index", 0)] = len(self.tools)
                return self._chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": block.get("id", ""),
                                "type": "function",
                                "function": {"name": block.get("name", ""), "arguments": ""},
                            }
                        ]
                    }
                )
            if block.get("type") == "text" and block.get("text"):
                return self._chunk({"content": block["text"]})
            return b""
        if kind == "content_block_delta":
            delta = document.get("delta") or {}
            if delta.get("type") == "text_delta":
                return self._chunk({"content": delta.get("text", "")})
            if delta.get("type") == "input_json_delta":
                index = self.tools.get(document.get("index", 0), 0)
                return self._chunk(
                    {"tool_calls": [{"index": index, "function": {"arguments": delta.get("partial_json", "")}}]}
                )
            return b""  # thinking and signatures have no OpenAI counterpart
        if kind == "message_delta":
            self.usage.update({k: v for k, v in (document.get("usage") or {}).items() if v is not None})
            stop = (document.get("delta") or {}).get("stop_reason") or "end_turn"
            return self._chunk({}, _TO_OPENAI_FINISH.get(stop, "stop"))
        if kind == "message_stop":
            return self.finish()
        if kind == "error":
            error = document.get("error") or {}
            return format_frame(
                {
                    "error": {
                        "message": error.get("message", ""),
                        "type": error.get("type", "api_error"),
                        "param": None,
                        "code": None,
                    }
                }
            )
        return b""  # ping

    def finish(self) -> bytes:
        if self.done:
            return b""
        self.done = True
        out = b""
        if self.include_usage:
            out += format_frame(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": _openai_usage(self.usage),
                }
            )
        return out + b"data: [DONE]\n\n"


class OpenAIToAnthropicStream(StreamTranslator):
    """OpenAI ``chat.completion.chunk`` frames → Anthropic ``message_*``/``content_block_*`` events."""

    def __init__(self) -> None:
        super().__init__()
        self.started = False
        self.done = False
        #: the kind of the open content block: None, "text" or "tool_use"
        self.open_block: str | None = None
        self.index = -1
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] = {}

    @staticmethod
    def _event(name: str, data: dict[str, Any]) -> bytes:
        return format_frame({"type": name, **data}, event=name)

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self.started = True
        message = {
            "id": "msg_" + str(chunk.get("id", uuid.uuid4().hex)).removeprefix("chatcmpl-"),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model", ""),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return self._event("message_start", {"message": message})

    def _close_block(self) -> bytes:
        if self.open_block is None:
            return b""
        self.open_block = None
        return self._event("content_block_stop", {"index": self.index})

    def _open(self, block: dict[str, Any]) -> bytes:
        out = self._close_block()
        self.index += 1
        self.open_block = block["type"]
        return out + self._event("content_block_start", {"index": self.index, "content_block": block})

    def frame(self, event: str | None, data: bytes) -> bytes:
        if data.strip() == b"[DONE]":
            return self.finish()
        chunk = _loads(data)
        if "error" in chunk:
            error = chunk.get("error") or {}
            return self._event(
                "error", {"error": {"type": error.get("type") or "api_error", "message": error.get("message", "")}}
            )
        out = b"" if self.started else self._start(chunk)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self.open_block != "text":
                    out += self._open({"type": "text", "text": ""})
                out += self._event(
                    "content_block_delta",
                    {"index": self.index, "delta": {"type": "text_delta", "text": delta["content"]}},
                )
            for call in delta.get("tool_calls") or []:
                function = call.get("function") or {}
                if call.get("id"):
                    out += self._open(
                        {"type": "tool_use", "id": call["id"], "name": function.get("name", ""), "input": {}}
                    )
                if function.get("arguments"):
                    out += self._event(
                        "content_block_delta",
                        {
                            "index": self.index,
                            "delta": {"type": "input_json_delta", "partial_json": function["arguments"]},
                        },
                    )
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def finish(self) -> bytes:
        if self.done or not self.started:
            return b""
        self.done = True
        usage = _anthropic_usage(self.usage)
        stop = _TO_ANTHROPIC_STOP.get(self.finish_reason or "stop", "end_turn")
        return (
            self._close_block()
            + self._event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": usage})
            + self._event("message_stop", {})
        )
