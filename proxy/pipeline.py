"""One call, from request to response: read → cache lookup → coalesce → route → relay.

Invariants:
- every call ends in exactly one outcome (cached, coalesced, upstream, error, cancelled) and
  telemetry records it once, in ``finally``;
- fallback happens only inside ``router.route``, before the relay prepares the
  response; after that a failure can only end the stream;
- errors the proxy makes are rendered in the caller's dialect.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import hdrs, web

from proxy.cache import Cache
from proxy.cache.coalesce import Following
from proxy.call import Call, new_request_id
from proxy.config import Config
from proxy.dialects import Dialect, Operation
from proxy.errors import BadRequest, NotFound, ProxyError
from proxy.rag.config import ContextInjection
from proxy.relay import relay, send_error, send_following, send_stored
from proxy.request_body import check_writable, decode, read_body
from proxy.router.router import Router
from proxy.telemetry import Telemetry
from proxy.telemetry.logs import EVENTS


class Pipeline:
    def __init__(self, config: Config, router: Router, cache: Cache, telemetry: Telemetry) -> None:
        self.config = config
        self.router = router
        self.cache = cache
        self.telemetry = telemetry
        #: calls on this pipeline now: a config reload closes what it replaced once they end
        self.in_flight = 0

    async def handle(self, request: web.Request, dialect: Dialect, operation: Operation) -> web.StreamResponse:
        call = Call(request, dialect, operation, request.headers.get("x-request-id") or new_request_id())
        call.observer = self.telemetry.observe(call)
        self.in_flight += 1
        try:
            await self.read(call)
            if (stored := await self.cache.lookup(call)) is not None:  # a stored answer, replayed
                return send_stored(call, stored)
            answer = await self.cache.coalesce(call)  # an identical call in flight answers this one
            if isinstance(answer, Following):
                return await send_following(call, answer)
            if answer is not None:
                return send_stored(call, answer)
            async with self.router.route(call) as upstream:
                return await relay(call, upstream, self.cache.recorder(call))
        except asyncio.CancelledError:
            # The client left (aiohttp cancels its handler) before the call had its outcome:
            # queued for a slot, waiting for the first byte, mid-stream. Its own choice, what
            # nginx logs as 499: not one of the sidecar's errors.
            if call.outcome == "error" and call.error_type is None:
                call.outcome = "cancelled"
            raise
        except ProxyError as error:
            stale = await self.cache.rescue(call, error)  # an expired entry, if the policy allows one
            return send_stored(call, stale) if stale is not None else send_error(call, error)
        except Exception:
            # A bug, not a defined failure. Before a response is under way, the caller still gets
            # an error in its dialect (not aiohttp's bare text 500) and the proxy keeps serving.
            if call.status:
                raise
            EVENTS.error(
                "unexpected error",
                exc_info=True,
                extra={"fields": {"request_id": call.request_id, "model_group": call.model_group}},
            )
            return send_error(call, ProxyError("the sidecar failed to handle this call"))
        finally:
            self.in_flight -= 1
            self.cache.settle(call)
            self.telemetry.finish(call)

    async def read(self, call: Call) -> None:
        """Parse the body once; name the model group; check it exists."""
        request = call.request
        limit = self.config.server.max_body_bytes
        body = await read_body(request)
        call.body = decode(body, request.headers.get(hdrs.CONTENT_ENCODING), limit)
        try:
            payload = orjson.loads(call.body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise BadRequest("request body must be a JSON object")
        check_writable(payload, call.body)
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("you must provide a model parameter", param="model")
        group = self.config.model_groups.get(model)
        if group is None:
            raise NotFound(f"the model `{model}` does not exist or is not configured in this sidecar", param="model")
        call.payload = payload
        call.model_group = model
        stream = payload.get("stream")
        if stream is not None and not isinstance(stream, bool):
            # A provider refuses it too; read as "not streaming", it was routed and cached as JSON.
            raise BadRequest("stream must be true, false or null", param="stream")
        call.stream = stream is True
        call.client_key = call.dialect.client_credential(request.headers)
        if group.context is not None:
            await self.add_context(call, group.context)

    @staticmethod
    async def add_context(call: Call, settings: ContextInjection) -> None:
        """Retrieve passages for the last user message and add them as a system message."""
        from proxy.rag.service import CONTEXT_PASSAGES_HEADER, RETRIEVER  # loaded only where corpora are

        retriever = call.request.app[RETRIEVER]
        payload, added = await retriever.inject_context(call.payload, call.dialect.name, settings)
        if added:
            call.payload = payload
            call.body = orjson.dumps(payload)
        call.response_headers[CONTEXT_PASSAGES_HEADER] = str(added)
