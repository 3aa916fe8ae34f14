"""Turning a stored answer into the form a call asks for.

A streamed answer is stored as its SSE frames and a non-streaming one as its JSON
body; a later call may want the other form. Each ``Form`` knows one operation's
two shapes (OpenAI chat, completions and responses; Anthropic messages) and
converts between them the way the provider itself would have answered, so an
SDK reading a hit cannot tell it from a live answer: same ids, text, tool calls,
finish reasons and usage.

A form that cannot be converted (embeddings have no stream) returns ``None`` and
the call is treated as a miss.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from proxy.dialects.sse import format_frame, iter_frames, parse_frame

Doc = dict[str, Any]
DONE = b"data: [DONE]\n\n"


def _events(body: bytes) -> Iterable[tuple[str | None, Doc]]:
    for frame in iter_frames(body):
        event, data = parse_frame(frame)
        if not data or data == b"[DONE]":
            continue
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if isinstance(document, dict):
            yield event, document


class Form:
    """One operation's answer shapes. The base knows only JSON (embeddings)."""

    #: the stream may carry a usage-only chunk that is sent only when the call asks for it
    optional_usage = False

    def to_json(self, frames: bytes) -> Doc | None:
        return None

    def to_frames(self, document: Doc, include_usage: bool) -> bytes | None:
        return None

    @staticmethod
    def is_usage_frame(frame: bytes) -> bool:
        return False

    def strip_usage(self, frames: bytes) -> bytes:
        return b"".join(f for f in iter_frames(frames) if not self.is_usage_frame(f))


class OpenAIChoices(Form):
    """``/chat/completions`` and ``/completions``: choices of deltas, then ``[DONE]``."""

    optional_usage = True

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.chunk_object = "chat.completion.chunk" if chat else "text_completion"
        self.object = "chat.completion" if chat else "text_completion"

    @staticmethod
    def is_usage_frame(frame: bytes) -> bool:
        return b'"choices":[]' in frame and b'"usage"' in frame

    def to_json(self, frames: bytes) -> Doc | None:
        head: Doc | None = None
        choices: dict[int, Doc] = {}
        usage = None
        for _, chunk in _events(frames):
            if head is None:
                head = chunk
            if chunk.get("usage"):
                usage = chunk["usage"]
            for delta_choice in chunk.get("choices") or ():
                index = delta_choice.get("index", 0)
                choice = choices.setdefault(
                    index, {"parts": [], "tools": {}, "finish_reason": None, "logprobs": None, "refusal": None}
                )
                if delta_choice.get("logprobs"):
                    choice["logprobs"] = _add_logprobs(choice["logprobs"], delta_choice["logprobs"])
                if delta_choice.get("finish_reason"):
                    choice["finish_reason"] = delta_choice["finish_reason"]
                if not self.chat:
                    choice["parts"].append(delta_choice.get("text") or "")
                    continue
                delta = delta_choice.get("delta") or {}
                if delta.get("content"):
                    choice["parts"].append(delta["content"])
                if delta.get("refusal"):
                    choice["refusal"] = (choice["refusal"] or "") + delta["refusal"]
                for call in delta.get("tool_calls") or ():
                    tool = choice["tools"].setdefault(
                        call.get("index", 0),
                        {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                    )
                    if call.get("id"):
                        tool["id"] = call["id"]
                    function = call.get("function") or {}
                    tool["function"]["name"] += function.get("name") or ""
                    tool["function"]["arguments"] += function.get("arguments") or ""
        if head is None:
            return None
        document: Doc = {
            "id": head.get("id"),
            "object": self.object,
            "created": head.get("created"),
            "model": head.get("model"),
            "choices": [],
        }
        for index in sorted(choices):
            choice = choices[index]
            text = "".join(choice["parts"])
            if self.chat:
                message: Doc = {"role": "assistant", "content": text or None, "refusal": choice["refusal"]}
                if choice["tools"]:
                    message["tool_calls"] = [choice["tools"][i] for i in sorted(choice["tools"])]
                document["choices"].append(
                    {
                        "index": index,
                        "message": message,
                        "finish_reason": choice["finish_reason"],
                        "logprobs": choice["logprobs"],
                    }
                )
            else:
                document["choices"].append(
                    {
                        "index": index,
                        "text": text,
                        "finish_reason": choice["finish_reason"],
                        "logprobs": choice["logprobs"],
                    }
                )
        if usage is not None:
            document["usage"] = usage
        if "system_fingerprint" in head:
            document["system_fingerprint"] = head["system_fingerprint"]
        return document

    def to_frames(self, document: Doc, include_usage: bool) -> bytes | None:
        base = {
            "id": document.get("id"),
            "object": self.chunk_object,
            "created": document.get("created"),
            "model": document.get("model"),
        }
        if "system_fingerprint" in document:
            base["system_fingerprint"] = document["system_fingerprint"]
        frames: list[bytes] = []
        for choice in document.get("choices") or ():
            index = choice.get("index", 0)

            def chunk(body: Doc, finish: str | None = None, logprobs: Doc | None = None, index: Any = index) -> None:
                frames.append(
                    format_frame(
                        {**base, "choices": [{"index": index, **body, "finish_reason": finish, "logprobs": logprobs}]}
                    )
                )

            # The whole text goes in one chunk, and its log probabilities with it.
            logprobs = choice.get("logprobs")
            if not self.chat:
                chunk({"text": choice.get("text") or ""}, logprobs=logprobs)
                chunk({"text": ""}, choice.get("finish_reason"))
                continue
            message = choice.get("message") or {}
            chunk({"delta": {"role": "assistant", "content": "" if message.get("content") is not None else None}})
            if message.get("content"):
                chunk({"delta": {"content": message["content"]}}, logprobs=logprobs)
            if message.get("refusal"):
                chunk({"delta": {"refusal": message["refusal"]}})
            for position, tool in enumerate(message.get("tool_calls") or ()):
                chunk({"delta": {"tool_calls": [{"index": position, **tool}]}})
            chunk({"delta": {}}, choice.get("finish_reason"))
        if include_usage and document.get("usage"):
            frames.append(format_frame({**base, "choices": [], "usage": document["usage"]}))
        frames.append(DONE)
        return b"".join(frames)


def _add_logprobs(whole: Doc | None, part: Doc) -> Doc:
    """A stream's log probabilities come a few tokens per chunk: each list field grows
    (chat: ``content``, ``refusal``; completions: ``tokens``, ``token_logprobs`` …)."""
    if whole is None:
        return {key: list(value) if isinstance(value, list) else value for key, value in part.items()}
    for key, value in part.items():
        if isinstance(value, list):
            if isinstance(whole.get(key), list):
                whole[key].extend(value)
            else:
                whole[key] = list(value)
        elif whole.get(key) is None:
            whole[key] = value
    return whole


class OpenAIResponses(Form):
    """``/responses``: typed events; ``response.completed`` carries the whole response."""

    def to_json(self, frames: bytes) -> Doc | None:
        for _, event in _events(frames):
            if event.get("type") == "response.completed":
                return event.get("response")
        return None

    def to_frames(self, document: Doc, include_usage: bool) -> bytes | None:
        events: list[Doc] = [
            {"type": "response.created", "response": {**document, "status": "in_progress", "output": [], "usage": None}}
        ]
        for output_index, item in enumerate(document.get("output") or ()):
            events.append(
                {
                    "type": "response.output_item.added",
                    "output_index": output_index,
                    "item": {**item, "status": "in_progress", "content": []} if item.get("type") == "message" else item,
                }
            )
            for content_index, part in enumerate(item.get("content") or ()):
                if part.get("type") != "output_text":
                    continue
                ids = {"item_id": item.get("id"), "output_index": output_index, "content_index": content_index}
                events.append({"type": "response.content_part.added", **ids, "part": {**part, "text": ""}})
                events.append(
                    {"type": "response.output_text.delta", **ids, "delta": part.get("text", ""), "logprobs": []}
                )
                events.append(
                    {"type": "response.output_text.done", **ids, "text": part.get("text", ""), "logprobs": []}
                )
                events.append({"type": "response.content_part.done", **ids, "part": part})
            events.append({"type": "response.output_item.done", "output_index": output_index, "item": item})
        events.append({"type": "response.completed", "response": document})
        return b"".join(format_frame({**e, "sequence_number": n}, event=e["type"]) for n, e in enumerate(events))


class AnthropicMessages(Form):
    """``/v1/messages``: message_start, content blocks of deltas, message_delta, message_stop."""

    def to_json(self, frames: bytes) -> Doc | None:
        message: Doc | None = None
        blocks: dict[int, Doc] = {}
        partial: dict[int, str] = {}
        for _, event in _events(frames):
            kind = event.get("type")
            if kind == "message_start":
                message = dict(event.get("message") or {})
            elif kind == "content_block_start":
                blocks[event.get("index", 0)] = dict(event.get("content_block") or {})
            elif kind == "content_block_delta":
                index = event.get("index", 0)
                block = blocks.setdefault(index, {"type": "text", "text": ""})
                delta = event.get("delta") or {}
                dtype = delta.get("type")
                if dtype == "text_delta":
                    block["text"] = block.get("text", "") + delta.get("text", "")
                elif dtype == "input_json_delta":
                    partial[index] = partial.get(index, "") + delta.get("partial_json", "")
                elif dtype == "thinking_delta":
                    block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
                elif dtype == "signature_delta":
                    block["signature"] = delta.get("signature", "")
            elif kind == "message_delta" and message is not None:
                message.update(event.get("delta") or {})
                message["usage"] = {**(message.get("usage") or {}), **(event.get("usage") or {})}
        if message is None:
            return None
        for index, text in partial.items():
            try:
                blocks[index]["input"] = orjson.loads(text) if text else {}
            except orjson.JSONDecodeError:
                return None
        message["content"] = [blocks[i] for i in sorted(blocks)]
        return message

    def to_frames(self, document: Doc, include_usage: bool) -> bytes | None:
        usage = document.get("usage") or {}
        start = {
            **document,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1},
        }
        events: list[Doc] = [{"type": "message_start", "message": start}]
        for index, block in enumerate(document.get("content") or ()):
            kind = block.get("type")
            if kind == "text":
                events.append({"type": "content_block_start", "index": index, "content_block": {**block, "text": ""}})
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": block.get("text", "")},
                    }
                )
            elif kind in ("tool_use", "server_tool_use"):
                events.append({"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}})
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {
                            "type": "input_json_delta",
                            "partial_json": orjson.dumps(block.get("input", {})).decode(),
                        },
                    }
                )
            elif kind == "thinking":
                events.append(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {**block, "thinking": "", "signature": ""},
                    }
                )
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "thinking_delta", "thinking": block.get("thinking", "")},
                    }
                )
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "signature_delta", "signature": block.get("signature", "")},
                    }
                )
            else:
                events.append({"type": "content_block_start", "index": index, "content_block": block})
            events.append({"type": "content_block_stop", "index": index})
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": document.get("stop_reason"), "stop_sequence": document.get("stop_sequence")},
                "usage": {"output_tokens": usage.get("output_tokens", 0)},
            }
        )
        events.append({"type": "message_stop"})
        return b"".join(format_frame(e, event=e["type"]) for e in events)


JSON_ONLY = Form()
FORMS: dict[tuple[str, str], Form] = {
    ("openai", "/chat/completions"): OpenAIChoices(chat=True),
    ("openai", "/completions"): OpenAIChoices(chat=False),
    ("openai", "/responses"): OpenAIResponses(),
    ("anthropic", "/v1/messages"): AnthropicMessages(),
}


def form_of(dialect: str, operation_path: str) -> Form:
    return FORMS.get((dialect, operation_path), JSON_ONLY)


def wants_usage(payload: Doc) -> bool:
    """An OpenAI streaming call that asked for the usage chunk."""
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
