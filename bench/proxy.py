"""A TCP proxy that delays every chunk by a fixed time each way, to put a worker 50 ms of
round trip away from its server (a GPU at home, the server in the cloud) on one machine.

Chunks are delayed, not serialised: a chunk read at t is written at t + delay whatever came
before it, as on a long link with ample bandwidth. Listens on loopback only.

    python -m bench.proxy --target 127.0.0.1:8000 --delay-ms 25   # prints `listening on URL`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Sequence

CHUNK = 256 * 1024  # bytes per read
HOST = "127.0.0.1"
LIFETIME = 1800.0  # seconds: the proxy ends by itself if its parent forgot it


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader to writer, each chunk `delay` seconds after it was read, in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver(), name="deliver")
    try:
        while True:
            data = await reader.read(CHUNK)
            queue.put_nowait((loop.time() + delay, data))
            if not data:  # EOF travels with the same delay
                break
        await sender
    except (ConnectionError, OSError):
        pass
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await sender


async def _handle(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    target: tuple[str, int],
    delay: float,
) -> None:
    try:
        server_r, server_w = await asyncio.open_connection(*target)
    except OSError:
        client_w.close()
        return
    try:
        await asyncio.gather(_pump(client_r, server_w, delay), _pump(server_r, client_w, delay))
    finally:
        for w in (client_w, server_w):
            w.close()
            with contextlib.suppress(ConnectionError, OSError):
                await w.wait_closed()


async def serve(
    target: tuple[str, int], delay: float, port: int = 0, lifetime: float = LIFETIME
) -> None:
    """Serve until SIGTERM/SIGINT (or `lifetime` seconds, so an orphan ends), printing
    `listening on URL` once bound."""
    server = await asyncio.start_server(
        lambda r, w: _handle(r, w, target, delay), HOST, port, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on http://{HOST}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), lifetime)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A TCP proxy that delays each chunk.")
    parser.add_argument("--target", required=True, help="host:port to forward to")
    parser.add_argument("--delay-ms", type=float, default=25.0, help="delay each way")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--lifetime", type=float, default=LIFETIME, help="seconds, at most")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    asyncio.run(serve((host or HOST, int(port)), args.delay_ms / 1000, args.port, args.lifetime))


if __name__ == "__main__":
    main()
