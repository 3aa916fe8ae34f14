"""Token counts read off answers, in both dialects: the one place they are read.

Where the counts are (``usage`` objects):

- OpenAI JSON answers: ``usage.prompt_tokens`` / ``completion_tokens``
  (Responses API and embeddings: ``input_tokens`` / ``output_tokens``, ``prompt_tokens``);
- OpenAI streams: the last chunk when ``stream_options.include_usage`` is set,
  ``response.completed`` for the Responses API;
- Anthropic: ``usage`` in the JSON answer; in a stream, ``message_start`` carries
  the input count and ``message_delta`` the (cumulative) output count.

Anthropic counts cached prompt tokens apart from ``input_tokens``
(``cache_read_input_tokens``, ``cache_creation_input_tokens``); they are input all
the same, so ``input_tokens`` here is their sum, whichever way the answer came
(live, replayed from the cache, or translated).
"""

from __future__ import annotations

from typing import Any

_INPUT_KEYS = ("input_tokens", "prompt_tokens")
_OUTPUT_KEYS = ("output_tokens", "completion_tokens")
_CACHED_INPUT_KEYS = ("cache_read_input_tokens", "cache_creation_input_tokens")


def merge_usage(usage: dict[str, int], found: Any) -> None:
    """Update ``usage`` from one ``usage`` object; later counts replace earlier ones."""
    if not isinstance(found, dict):
        return
    for key in _INPUT_KEYS:
        value = found.get(key)
        if isinstance(value, int):
            total = value + 0  # an int even when the count is a bool, as ``sum`` made it
            for cached in _CACHED_INPUT_KEYS:  # a loop, not a generator: this runs on every answer
                extra = found.get(cached)
                if isinstance(extra, int):
                    total += extra
            usage["input_tokens"] = total
            break
    for key in _OUTPUT_KEYS:
        value = found.get(key)
        if isinstance(value, int):
            usage["output_tokens"] = value
            break


def answer_usage(document: Any) -> dict[str, int]:
    """The token counts of a whole JSON answer (any operation, either dialect)."""
    usage: dict[str, int] = {}
    if isinstance(document, dict):
        merge_usage(usage, document.get("usage"))
    return usage
