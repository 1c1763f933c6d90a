"""The pull design with nothing else: embedq's hops, no database, no queue logic.

As bench/ideal.py, but the process the clients talk to never calls the double: a second
process, the puller (embedq's worker behind NAT), long-polls it for texts, calls the double
and posts the vectors back. A request crosses the same processes as through embedq
(client -> server -> puller -> double -> puller -> server -> client) with no database, no
durable state and no scheduling: the puller claims again as soon as it has the double's
answer, posting that answer meanwhile. What an idle request costs here over a direct call
is what the pull design itself costs on this machine.

    python -m bench.ideal_pull --port 0                     # the server: `listening on URL`
    python -m bench.ideal_pull --puller URL --double URL    # the puller
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from .floor import serve_until_stopped, until_stopped
from .ideal import MAX_BATCH, create_app, embed_on_double
from .stack import GPU_MODEL

CLAIM_WAIT = 10.0  # seconds a claim waits for texts before it is answered empty


class PullQueue:
    """Texts waiting for the puller, and the requests waiting for their vectors."""

    def __init__(self, max_batch: int = MAX_BATCH) -> None:
        self._max_batch = max(1, max_batch)
        self._pending: list[tuple[str, asyncio.Future[str]]] = []
        self._out: dict[int, asyncio.Future[str]] = {}
        self._ids = itertools.count()
        self._arrived = asyncio.Event()

    async def embed(self, texts: list[str]) -> list[str]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in texts]
        self._pending += zip(texts, futures, strict=True)
        self._arrived.set()
        return list(await asyncio.gather(*futures))

    async def claim(self, wait: float = CLAIM_WAIT) -> list[tuple[int, str]]:
        """Up to max_batch pending texts with their ids, waiting up to `wait` for one."""
        if not self._pending:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), wait)
        group = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        claimed = []
        for text, fut in group:
            item = next(self._ids)
            self._out[item] = fut
            claimed.append((item, text))
        return claimed

    def complete(self, ids: list[int], vectors: list[str] | None, error: str = "") -> None:
        """The puller's answer for claimed ids: their vectors, or the error that lost them."""
        for n, item in enumerate(ids):
            fut = self._out.pop(item, None)
            if fut is None or fut.done():
                continue
            if vectors is None:
                fut.set_exception(ValueError(error or "the puller failed"))
            else:
                fut.set_result(vectors[n])


def create_pull_app(queue: PullQueue) -> web.Application:
    """The embeddings endpoint, and the two routes the puller calls."""

    async def claim(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"items": await queue.claim()}))

    async def results(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        queue.complete(body["ids"], body.get("vectors"), body.get("error", ""))
        return web.Response(status=204)

    app = create_app(queue)
    app.router.add_post("/claim", claim)
    app.router.add_post("/results", results)
    return app


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> None:
    async with session.post(url, data=orjson.dumps(body)) as resp:
        resp.raise_for_status()


async def pull(server: str, double: str, model: str = GPU_MODEL) -> None:
    """Claim, compute, post (in the background, while the next claim goes out); forever."""
    posts: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession() as session:
        print(f"pulling from {server}", flush=True)
        while True:
            async with session.post(f"{server}/claim") as resp:
                resp.raise_for_status()
                items = orjson.loads(await resp.read())["items"]
            if not items:
                continue
            ids = [item for item, _ in items]
            body: dict[str, Any]
            try:
                texts = [text for _, text in items]
                body = {"ids": ids, "vectors": await embed_on_double(session, double, model, texts)}
            except (aiohttp.ClientError, KeyError, ValueError) as exc:
                body = {"ids": ids, "error": f"the double: {exc}"}
            task = asyncio.create_task(_post(session, f"{server}/results", body))
            posts.add(task)
            task.add_done_callback(posts.discard)


async def run_puller(server: str, double: str) -> None:
    puller = asyncio.create_task(pull(server.rstrip("/"), double.rstrip("/")), name="puller")
    stopped = asyncio.create_task(until_stopped(), name="until-stopped")
    await asyncio.wait([puller, stopped], return_when=asyncio.FIRST_COMPLETED)
    for task in (puller, stopped):
        task.cancel()
    await asyncio.gather(puller, stopped, return_exceptions=True)
    if puller.done() and not puller.cancelled() and puller.exception() is not None:
        raise SystemExit(f"the puller stopped: {puller.exception()!r}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The pull design with nothing else.")
    parser.add_argument("--port", type=int, default=0, help="server: 0 picks a free port")
    parser.add_argument("--puller", metavar="URL", help="run the puller against this server")
    parser.add_argument("--double", help="the puller's Ollama double")
    args = parser.parse_args(argv)
    if args.puller:
        if not args.double:
            parser.error("--puller needs --double")
        asyncio.run(run_puller(args.puller, args.double))
    else:
        asyncio.run(serve_until_stopped(create_pull_app(PullQueue()), args.port))


if __name__ == "__main__":
    main()
