"""A paced event stream from an upstream that costs next to nothing: the slow-stream benchmark's model.

Answers every request with the benchmark's 20-chunk chat.completion stream
(``hotpath.static_stream``), one frame every ``--gap-ms`` after ``--first-ms``, as
HTTP/1.1 chunked transfer over keep-alive connections. It is a bare asyncio protocol
on uvloop, not an aiohttp app: the mock provider spends a core's worth of Python
on 64 streams of 2.5 ms gaps, and a saturated upstream turns the proxies' added
latency into noise. Requests are read only to their end (headers + Content-Length).

    python -m bench.paced --port 8003 [--gap-ms 2.5] [--first-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio

from bench.hotpath import static_stream

_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def frames() -> list[bytes]:
    """Each SSE frame of the stream as one HTTP chunk; the last one also ends the body."""
    events = [event + b"\n\n" for event in static_stream().split(b"\n\n") if event]
    chunks = [b"%x\r\n%s\r\n" % (len(event), event) for event in events]
    chunks[-1] += b"0\r\n\r\n"
    return chunks


class PacedStream(asyncio.Protocol):
    def __init__(self, chunks: list[bytes], first: float, gap: float) -> None:
        self.chunks, self.first, self.gap = chunks, first, gap
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.WriteTransport | None = None
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCP transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.pending += data
        end = self.pending.find(b"\r\n\r\n")
        if end < 0:
            return
        length = 0
        for line in self.pending[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.pending) < end + 4 + length:
            return
        self.pending = self.pending[end + 4 + length :]  # a client sends its next request after this answer
        assert self.transport is not None
        self.transport.write(_HEAD)
        self.loop.call_later(self.first, self.send, 0)

    def send(self, index: int) -> None:
        if self.transport is None:  # the client left
            return
        self.transport.write(self.chunks[index])
        if index + 1 < len(self.chunks):
            self.loop.call_later(self.gap, self.send, index + 1)


async def serve(port: int, first: float, gap: float) -> None:
    chunks = frames()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: PacedStream(chunks, first, gap), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gap-ms", type=float, default=2.5, help="between frames (default 2.5)")
    parser.add_argument("--first-ms", type=float, default=0.0, help="before the first frame (default 0)")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    runner(serve(args.port, args.first_ms / 1000, args.gap_ms / 1000))


if __name__ == "__main__":
    main()
