"""The bare pass-through: the reference any Python proxy on this machine can reach.

One shared ``ClientSession``; every POST goes to the same path on one fixed upstream
with its body as is, and the answer streams back as it arrives. No parsing, no
routing, no headers beyond the content type: the floor under the sidecar's cost.

    python -m bench.passthrough --port 8001 --upstream http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
    )
    yield
    await app[SESSION].close()


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    async with request.app[SESSION].post(request.app[UPSTREAM] + request.path, data=body, headers=headers) as answer:
        response = web.StreamResponse(
            status=answer.status,
            headers={"Content-Type": answer.headers.get("Content-Type", "application/octet-stream")},
        )
        await response.prepare(request)
        async for chunk in answer.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def build_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    args = parser.parse_args()
    try:  # the same event loop as the sidecar, so the comparison is fair
        import uvloop
    except ImportError:
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    web.run_app(build_app(args.upstream), host="127.0.0.1", port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
