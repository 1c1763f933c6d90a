"""The pull design with nothing else: embedq's hops, no database, no queue logic.

As bench/ideal.py, but the process the clients talk to never calls the double: a second
process, the puller (embedq's worker behind NAT), long-polls it for texts, calls the double
and posts the vectors back. A request crosses the same processes as through embedq
(client -> server -> puller -> double -> puller -> server -> client) with no database and
no durable state. What an idle request costs here over a direct call is what the pull
design itself costs on this machine. The puller claims one of two ways:

- `timed` (the default): as embedq's worker does (embedq_worker.pacing): it keeps one call
  computing and the next waiting at the double, and sends each claim so that its texts
  reach the double just before it drains (`--lead-ms` earlier still; negative: later);
- `greedy`: it claims again as soon as it has the double's answer (the tenth round's
  yardstick, which read ~60% of ceiling(32) and hid what the design can reach).

`--delays-ms INSERT,CLAIM,COMPLETE` and `--busy-ms` make the server pay what embedq's
durable state costs on a text's path, to measure what each part costs the 32 clients
(bench/chain.py): a text becomes claimable INSERT ms after it arrives, a claim's answer
leaves CLAIM ms after it took its texts, the answers go COMPLETE ms after the results
arrive (the completion statement before the answers), and each request burns BUSY ms of
the server's CPU (embedq's server works more per request than this one).

    python -m bench.ideal_pull --port 0 [--delays-ms 2,3,4.5]   # the server: `listening on URL`
    python -m bench.ideal_pull --puller URL --double URL        # the puller
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from embedq_worker.pacing import Pipeline, RoundTrips

from .floor import serve_until_stopped, until_stopped
from .ideal import MAX_BATCH, create_app, embed_on_double
from .stack import GPU_MODEL

CLAIM_WAIT = 10.0  # seconds a claim waits for texts before it is answered empty
PULLERS = ("timed", "greedy")
IN_FLIGHT = 2  # timed: calls at the double at most (one computing, one waiting)


@dataclass(frozen=True)
class Delays:
    """What the server makes a text's path pay, in seconds (see the module's docstring)."""

    insert: float = 0.0
    claim: float = 0.0
    complete: float = 0.0
    busy: float = 0.0  # CPU per request

    @classmethod
    def parse(cls, delays_ms: str, busy_ms: float = 0.0) -> Delays:
        """From "INSERT,CLAIM,COMPLETE" in milliseconds (missing parts: 0)."""
        parts = [float(p) / 1000 for p in delays_ms.split(",") if p.strip()] if delays_ms else []
        if len(parts) > 3 or any(p < 0 for p in parts) or busy_ms < 0:
            raise ValueError(f"--delays-ms takes up to three non-negative numbers: {delays_ms!r}")
        insert, claim, complete = [*parts, 0.0, 0.0, 0.0][:3]
        return cls(insert, claim, complete, busy_ms / 1000)


def _burn(seconds: float) -> None:
    """Hold the CPU (and the event loop) for `seconds`, as more work per request would."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class PullQueue:
    """Texts waiting for the puller, and the requests waiting for their vectors."""

    def __init__(self, max_batch: int = MAX_BATCH, delays: Delays = Delays()) -> None:
        self._max_batch = max(1, max_batch)
        self._delays = delays
        self._pending: list[tuple[str, asyncio.Future[str]]] = []
        self._out: dict[int, asyncio.Future[str]] = {}
        self._ids = itertools.count()
        self._arrived = asyncio.Event()

    async def embed(self, texts: list[str]) -> list[str]:
        if self._delays.busy:
            _burn(self._delays.busy)
        if self._delays.insert:
            await asyncio.sleep(self._delays.insert)
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
        if claimed and self._delays.claim:
            await asyncio.sleep(self._delays.claim)
        return claimed

    def complete(self, ids: list[int], vectors: list[str] | None, error: str = "") -> None:
        """The puller's answer for claimed ids: their vectors, or the error that lost them
        (after the `complete` delay, when there is one)."""
        if self._delays.complete:
            asyncio.get_running_loop().call_later(
                self._delays.complete, self._settle, ids, vectors, error
            )
        else:
            self._settle(ids, vectors, error)

    def _settle(self, ids: list[int], vectors: list[str] | None, error: str) -> None:
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


class Puller:
    """Claim, compute, post: each call's answer is posted in the background."""

    def __init__(
        self, session: aiohttp.ClientSession, server: str, double: str, model: str = GPU_MODEL
    ) -> None:
        self._session = session
        self._server = server
        self._double = double
        self._model = model
        self._tasks: set[asyncio.Task[None]] = set()

    async def claim(self) -> list[tuple[int, str]]:
        async with self._session.post(f"{self._server}/claim") as resp:
            resp.raise_for_status()
            items: list[tuple[int, str]] = orjson.loads(await resp.read())["items"]
            return items

    async def compute(self, items: list[tuple[int, str]]) -> None:
        """One call to the double; its answer (or its error) is posted without waiting."""
        ids = [item for item, _ in items]
        body: dict[str, Any]
        try:
            texts = [text for _, text in items]
            vectors = await embed_on_double(self._session, self._double, self._model, texts)
            body = {"ids": ids, "vectors": vectors}
        except (aiohttp.ClientError, KeyError, ValueError) as exc:
            body = {"ids": ids, "error": f"the double: {exc}"}
        self.background(self._post(body))

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, body: dict[str, Any]) -> None:
        async with self._session.post(f"{self._server}/results", data=orjson.dumps(body)) as resp:
            resp.raise_for_status()

    async def run_greedy(self) -> None:
        """Claim again as soon as the double has answered."""
        while True:
            items = await self.claim()
            if items:
                await self.compute(items)

    async def run_timed(self, lead: float) -> None:
        """embedq's worker's timing (embedq_worker.pacing): a call waits at the double while
        the one ahead of it computes, and the claim for the next goes out so that its texts
        reach the double just before it drains; `lead` seconds earlier still (or later)."""
        pipeline, trips = Pipeline(1), RoundTrips()
        room = asyncio.Semaphore(IN_FLIGHT)
        last = 1  # texts in the last claim
        while True:
            await room.acquire()
            now = time.monotonic()
            at = pipeline.claim_at(now, last, trips.estimate()) if pipeline.in_flight else None
            if at is not None and at - lead > now:
                await asyncio.sleep(at - lead - now)
            sent = time.monotonic()
            items = await self.claim()
            if not items:
                room.release()
                continue
            trips.observe(time.monotonic() - sent)
            last = len(items)
            key = object()
            pipeline.dispatch(key, len(items), time.monotonic())
            self.background(self._timed_call(pipeline, key, items, room))

    async def _timed_call(
        self,
        pipeline: Pipeline,
        key: object,
        items: list[tuple[int, str]],
        room: asyncio.Semaphore,
    ) -> None:
        try:
            await self.compute(items)
        finally:
            pipeline.finish(key, time.monotonic(), learn=True)
            room.release()


async def pull(server: str, double: str, mode: str = "timed", lead: float = 0.0) -> None:
    async with aiohttp.ClientSession() as session:
        puller = Puller(session, server, double)
        print(f"pulling from {server} ({mode})", flush=True)
        if mode == "greedy":
            await puller.run_greedy()
        else:
            await puller.run_timed(lead)


async def run_puller(server: str, double: str, mode: str, lead: float) -> None:
    work = pull(server.rstrip("/"), double.rstrip("/"), mode, lead)
    puller = asyncio.create_task(work, name="puller")
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
    parser.add_argument("--delays-ms", default="", help="server: INSERT,CLAIM,COMPLETE in ms")
    parser.add_argument("--busy-ms", type=float, default=0.0, help="server: CPU per request")
    parser.add_argument("--puller", metavar="URL", help="run the puller against this server")
    parser.add_argument("--double", help="the puller's Ollama double")
    parser.add_argument("--mode", choices=PULLERS, default="timed", help="the puller's claims")
    parser.add_argument(
        "--lead-ms", type=float, default=0.0, help="timed: claim this much earlier (ms)"
    )
    args = parser.parse_args(argv)
    if args.puller:
        if not args.double:
            parser.error("--puller needs --double")
        asyncio.run(run_puller(args.puller, args.double, args.mode, args.lead_ms / 1000))
    else:
        try:
            delays = Delays.parse(args.delays_ms, args.busy_ms)
        except ValueError as exc:
            parser.error(str(exc))
        asyncio.run(serve_until_stopped(create_pull_app(PullQueue(delays=delays)), args.port))


if __name__ == "__main__":
    main()
