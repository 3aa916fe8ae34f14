"""aiohttp's static-answer floor: the least any aiohttp server can do for a call.

Reads the request body and answers with a fixed body: the canned chat.completion for
POSTs under ``/v1/``, the canned event stream under ``/sse/v1/``, as one ``web.Response``
of pre-encoded bytes. No upstream, no parsing: what a cache hit could cost at best.

    python -m bench.floor --port 8002 --json answer.json --sse answer.sse
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from aiohttp import web


def build_app(json_body: bytes, sse_body: bytes) -> web.Application:
    json_headers = {"Content-Type": "application/json"}
    sse_headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}

    async def json_answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=json_body, headers=json_headers)

    async def sse_answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=sse_body, headers=sse_headers)

    app = web.Application()
    app.router.add_post("/sse/v1/{tail:.*}", sse_answer)
    app.router.add_post("/v1/{tail:.*}", json_answer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--json", type=Path, required=True, help="file with the JSON answer")
    parser.add_argument("--sse", type=Path, required=True, help="file with the event stream")
    args = parser.parse_args()
    try:  # the same event loop as the sidecar and the pass-through
        import uvloop
    except ImportError:
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    app = build_app(args.json.read_bytes(), args.sse.read_bytes())
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
