"""A Service's port reaching its pods' target port (kube-proxy's part), as a TCP relay.

Run inside a pod-like network namespace: ``python -m tests.kube.forward 443:8443 [PORT:TARGET ...]``.
A relay in user space rather than an iptables REDIRECT: the redirect depends on the machine's
netfilter set-up, and on a CI machine the rule was gone when the call came (an empty nat
table listed in the failure), while a process that listens either runs or fails to start.
"""

from __future__ import annotations

import asyncio
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # a half-close is passed on: the other direction may still carry the answer
    except OSError:
        writer.close()


async def serve(port: int, target: int) -> asyncio.Server:
    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_w.close()  # nothing on the target port yet: as a Service without ready pods, the caller retries
            return
        await asyncio.gather(pipe(client_r, upstream_w), pipe(upstream_r, client_w))
        client_w.close()
        upstream_w.close()

    return await asyncio.start_server(relay, "0.0.0.0", port)


async def main(pairs: list[str]) -> None:
    servers = [await serve(*map(int, pair.split(":"))) for pair in pairs]
    print("forwarding", *pairs, flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
