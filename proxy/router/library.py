"""``ConcurrentRouter``: the sidecar's router as a library, driven by a prompt.

It is the proxy's ``Router`` (same semaphores, selection, fallback, retries,
circuit breaking, cross-dialect translation) over one model group holding every
endpoint given. A call is built as an OpenAI chat request; endpoints of the
Anthropic dialect get it translated, and their answers come back translated, so
one code path reads every answer.

    async with ConcurrentRouter([
        ModelEndpoint(name="gpt-4", url="https://api.openai.com/v1/chat/completions", max_concurrent=5),
        ModelEndpoint(name="claude-3", url="https://api.anthropic.com/v1/messages", max_concurrent=3),
    ]) as router:
        result = await router.route_request("Explain quantum computing", preferred_model="gpt-4")
        print(result["model"], result["response"])
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.call import Call
from proxy.dialects import OPENAI
from proxy.dialects.sse import iter_frames, parse_frame
from proxy.dialects.stream import AnswerStream
from proxy.endpoint_config import EndpointConfig
from proxy.errors import UpstreamBroken, UpstreamError
from proxy.router.config import HealthConfig, RouteConfig, RouterConfig
from proxy.router.health import HealthProber
from proxy.router.router import PREFER_HEADER, Router
from proxy.upstream import Upstream

#: the one model group the library's endpoints form
GROUP = "default"
_CHAT = OPENAI.operations["/chat/completions"]


@dataclass(frozen=True)
class _LibraryConfig:
    model_groups: Mapping[str, RouteConfig]
    router: RouterConfig


class _NoRequest:
    """Stands in for the client request a sidecar call has: only its headers are read."""

    __slots__ = ("headers",)

    def __init__(self, headers: CIMultiDict[str]) -> None:
        self.headers = CIMultiDictProxy(headers)


class ConcurrentRouter:
    """Routes prompts over ``endpoints`` with per-endpoint concurrency limits and fallback.

    ``settings`` is the sidecar's ``router`` section (``RouterConfig``); by default
    active health probes are off in the library (passive circuit breaking is on).
    Use it as an async context manager, or call ``close()``: it owns its client
    session unless one is given, one per event loop it is used on (each closed as its
    loop ends, so ``asyncio.run`` per call holds no more sockets than one). Failures
    raise ``proxy.errors.ProxyError`` subclasses: ``UpstreamError`` (last attempt's
    failure), ``Overloaded`` (every endpoint full past the queue timeout) or
    ``NoEndpointAvailable``.
    """

    def __init__(
        self,
        endpoints: Sequence[EndpointConfig],
        *,
        settings: RouterConfig | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("ConcurrentRouter needs at least one endpoint")
        self._config = _LibraryConfig(
            model_groups={GROUP: RouteConfig(endpoints=list(endpoints))},
            router=settings or RouterConfig(health=HealthConfig(enabled=False)),
        )
        self._session = session
        self._owns_session = session is None
        self._router: Router | None = None
        self._prober: HealthProber | None = None
        #: the event loop the session and the probes run on, and the task that closes them with it
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closer: asyncio.Task[None] | None = None

    @property
    def router(self) -> Router:
        """The underlying ``Router`` (live endpoint state: ``router.status()``)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # status() outside any loop
            loop = None
        if self._router is None or (loop is not None and loop is not self._loop):
            self._open(loop)
        assert self._router is not None
        return self._router

    def _open(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """A session and probes on ``loop``: an aiohttp session is bound to the loop it was made on,
        so a script calling ``asyncio.run`` per question gets one per run. The endpoints' state
        (circuits, cooldowns, estimates) is the router's, kept from one loop to the next."""
        if self._owns_session or self._session is None:
            self._session = Upstream.new_session()
        upstream = Upstream(self._session)
        if self._router is None:
            self._router = Router(self._config, upstream)
        else:
            self._router.upstream = upstream
        self._prober = HealthProber(list(self._router.endpoints()), upstream, self._config.router.health)
        self._prober.start()
        self._loop = loop
        if loop is not None and self._owns_session:
            # Closed when the loop ends: ``asyncio.run`` cancels what is left and lets it finish,
            # so the session's connections close on their own loop, not leak with a closed one.
            self._closer = loop.create_task(_close_with_loop(self._session, self._prober))

    async def __aenter__(self) -> ConcurrentRouter:
        self.router  # noqa: B018  (starts the session and the probes)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        closer, self._closer = self._closer, None
        if closer is not None and not closer.done() and closer.get_loop() is asyncio.get_running_loop():
            closer.cancel()  # it closes the session and stops the probes
            await asyncio.wait([closer])
        elif closer is None:
            if self._prober is not None:
                await self._prober.stop()
            if self._owns_session and self._session is not None:
                await self._session.close()
        self._session = None if self._owns_session else self._session
        self._router = self._prober = None
        self._loop = None

    def status(self) -> dict[str, Any]:
        return self.router.status()["groups"][GROUP]

    # ------------------------------------------------------------------ calls

    def _call(
        self,
        prompt: str | None,
        preferred_model: str | None,
        messages: Sequence[Mapping[str, Any]] | None,
        system: str | None,
        stream: bool,
        params: dict[str, Any],
    ) -> Call:
        chat: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        chat.extend(dict(m) for m in messages or ())
        if prompt is not None:
            chat.append({"role": "user", "content": prompt})
        if not chat:
            raise ValueError("give a prompt or messages")
        payload: dict[str, Any] = {**params, "model": GROUP, "messages": chat}
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        headers: CIMultiDict[str] = CIMultiDict()
        if preferred_model:
            headers[PREFER_HEADER] = preferred_model
        call = Call(_NoRequest(headers), OPENAI, _CHAT, uuid.uuid4().hex)  # type: ignore[arg-type]  # the request parts the router reads
        call.body = orjson.dumps(payload)
        call.payload = payload
        call.model_group = GROUP
        call.stream = stream
        return call

    async def route_request(
        self,
        prompt: str | None = None,
        *,
        preferred_model: str | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        system: str | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """One completion: the preferred endpoint first, then the others by priority and load.

        ``messages`` are OpenAI-style chat messages that come before ``prompt``;
        ``params`` are chat parameters (``max_tokens``, ``temperature``, ``tools`` …).
        Returns ``model`` (the endpoint that answered), ``upstream_model``, ``response``
        (the text), ``tool_calls``, ``finish_reason``, ``usage`` (input/output tokens)
        and ``attempts`` (one entry per try: endpoint, status, seconds, error).
        """
        call = self._call(prompt, preferred_model, messages, system, False, params)
        async with self.router.route(call) as response:
            body = response.body
        completion = orjson.loads(body)
        choice = (completion.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        usage = completion.get("usage") or {}
        return {
            "model": call.endpoint,
            "upstream_model": completion.get("model"),
            "response": message.get("content") or "",
            "tool_calls": message.get("tool_calls") or [],
            "finish_reason": choice.get("finish_reason"),
            "usage": {
                "input_tokens": usage.get("prompt_tokens", 0),
                "output_tokens": usage.get("completion_tokens", 0),
            },
            "attempts": _attempts(call),
            "fallbacks": call.fallbacks,
            "retries": call.retries,
            "queue_wait": call.queue_wait,
        }

    async def stream_request(
        self,
        prompt: str | None = None,
        *,
        preferred_model: str | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        system: str | None = None,
        **params: Any,
    ) -> AsyncIterator[str]:
        """Like ``route_request``, yielding the text as it arrives.

        Fallback happens only before the first piece is yielded; a failure after that
        raises ``UpstreamError`` from the iteration.
        """
        call = self._call(prompt, preferred_model, messages, system, True, params)
        async with self.router.route(call) as response:
            if not response.is_stream:
                content = ((orjson.loads(response.body).get("choices") or [{}])[0].get("message") or {}).get("content")
                if content:
                    yield content
                return
            # Checked as the relay checks it: a stream that ends before [DONE] raises, it is not whole.
            answer = AnswerStream(call.operation.events, call.usage)
            try:
                async for chunk in response.chunks():
                    for frame in iter_frames(answer.feed(chunk)):
                        _, data = parse_frame(frame)
                        if not data or data == b"[DONE]":
                            continue
                        document = orjson.loads(data)
                        if "error" in document:
                            raise UpstreamBroken(str((document["error"] or {}).get("message", "stream failed")))
                        for choice in document.get("choices") or []:
                            if text := (choice.get("delta") or {}).get("content"):
                                yield text
                    if answer.ended or answer.fault is not None:
                        break
                if answer.failure is not None:
                    raise UpstreamBroken(answer.failure)
            except UpstreamError as error:
                call.error_type = error.type
                call.upstream_failure = error  # counts against the endpoint's health
                raise


async def _close_with_loop(session: aiohttp.ClientSession, prober: HealthProber) -> None:
    """Wait for the loop's end (or ``close()``), then stop the probes and close the session."""
    try:
        await asyncio.get_running_loop().create_future()
    finally:
        with contextlib.suppress(Exception):
            await prober.stop()
        await session.close()


def _attempts(call: Call) -> list[dict[str, Any]]:
    return [
        {"endpoint": name, "status": status, "seconds": round(seconds, 4), "error": error}
        for name, status, seconds, error in call.attempt_log
    ]
