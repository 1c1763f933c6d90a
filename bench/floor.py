"""The floor: a bare aiohttp server that answers every POST with a canned embeddings
response (one 768-dim base64 vector per input), so a run shows what the load generator and
one Python HTTP server can do on this machine with no queue, no database, no worker.

    python -m bench.floor --port 0     # prints `listening on URL`
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import signal
from collections.abc import Sequence

from aiohttp import web

from .stack import DIM

LIFETIME = 1800.0  # seconds: the floor server ends by itself if its parent forgot it
SHUTDOWN_GRACE = 0.5  # seconds open requests get once a helper server is told to stop
VECTOR = base64.b64encode(bytes(4 * DIM)).decode("ascii")


async def embeddings(request: web.Request) -> web.Response:
    body = json.loads(await request.read())
    raw = body.get("input")
    count = len(raw) if isinstance(raw, list) else 1
    data = [{"object": "embedding", "index": i, "embedding": VECTOR} for i in range(count)]
    return web.json_response({"object": "list", "data": data, "model": body.get("model")})


async def until_stopped(lifetime: float = LIFETIME) -> None:
    """Until SIGTERM or SIGINT, or `lifetime` if the parent forgot this process."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), lifetime)


async def serve_until_stopped(app: web.Application, port: int, lifetime: float = LIFETIME) -> None:
    """Serve `app` on 127.0.0.1:port (0: a free one), print `listening on URL`, and stop
    on a signal (the bench's helper servers). Requests still open then (a long-polling
    claim of bench/ideal_pull.py) get SHUTDOWN_GRACE, not aiohttp's 60 s."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print(f"listening on http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
        await until_stopped(lifetime)
    finally:
        await runner.cleanup()


async def serve(port: int, lifetime: float = LIFETIME) -> None:
    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    await serve_until_stopped(app, port, lifetime)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A bare aiohttp embeddings endpoint.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--lifetime", type=float, default=LIFETIME, help="seconds, at most")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.lifetime))


if __name__ == "__main__":
    main()
