"""Calls from retrieval to this sidecar's own routes: ``/v1/embeddings`` and ``/v1/chat/completions``.

Going through the sidecar's listener (not straight to a provider) gives the
embeddings and rewrites of retrieval the same routing, fallback, limits, cache
and metrics as any call. The listener's address is known only once it is bound,
so the client takes it as a callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import aiohttp
import orjson

from proxy.rag.errors import EmbeddingsError, RetrievalUnavailable


class SidecarClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: Callable[[], str | None], timeout: float = 60.0):
        self.session = session
        self.base_url = base_url
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _post(self, path: str, body: dict[str, Any], error: type[RetrievalUnavailable]) -> Any:
        base = self.base_url()
        if base is None:
            raise error("the sidecar's listener is not up yet")
        try:
            async with self.session.post(base + path, data=orjson.dumps(body), timeout=self.timeout) as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise error(f"{path} through the sidecar failed: {type(exc).__name__}: {exc}") from None
        try:
            answer = orjson.loads(payload)
        except orjson.JSONDecodeError:
            answer = None
        if status != 200 or not isinstance(answer, dict):
            message = answer.get("error", {}).get("message") if isinstance(answer, dict) else None
            raise error(f"model group {body.get('model')!r} answered {path} with {status}: {message or 'no JSON'}")
        return answer

    async def embed(
        self, model_group: str, texts: Sequence[str], kind: Literal["query", "passage"], input_type: bool
    ) -> list[list[float]]:
        """One vector per text, in order, from one ``/embeddings`` call."""
        body: dict[str, Any] = {"model": model_group, "input": list(texts)}
        if input_type:
            body["input_type"] = kind
        answer = await self._post("/embeddings", body, EmbeddingsError)
        try:
            data = sorted(answer["data"], key=lambda item: item["index"])
            vectors = [[float(x) for x in item["embedding"]] for item in data]
        except (KeyError, TypeError, ValueError):
            raise EmbeddingsError(f"model group {model_group!r} answered /embeddings without vectors") from None
        if len(vectors) != len(texts):
            raise EmbeddingsError(f"model group {model_group!r} gave {len(vectors)} vectors for {len(texts)} texts")
        return vectors

    async def chat(self, model_group: str, prompt: str) -> str:
        """The text of a one-message chat completion at temperature 0 (so the cache can answer a repeat)."""
        body = {"model": model_group, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
        answer = await self._post("/chat/completions", body, RetrievalUnavailable)
        try:
            return str(answer["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise RetrievalUnavailable(f"model group {model_group!r} answered without a message") from None
