"""The batching bound: what a server with nothing in its way gets from the same clients.

One aiohttp process answers the OpenAI embeddings endpoint and hands every text straight to
the GPU-like double: no database, no worker, no second hop; nothing is stored and nothing
survives a crash, so it is a yardstick, not a design. It batches one of two ways:

- `greedy`: whatever is pending goes in one call as soon as the double is free (a classic
  dynamic batcher);
- `oracle`: it knows the double's cost formula and sends the next call `--lead-ms` before
  the running one is due to end, so that call waits at the double's gate holding every
  text that arrived in the meantime and starts the moment the gate frees (the best
  schedule found; the lead was tuned on this machine, bench/README).

The 32-client target is read against these rows (bench/README, "What limits the rest").

    python -m bench.ideal --double URL --mode oracle --port 0   # prints `listening on URL`
"""

from __future__ import annotations

import argparse
import asyncio
import base64
from collections.abc import Sequence
from typing import Protocol

import aiohttp
import orjson
from aiohttp import web

from embedq_worker.backends.base import floats_to_bytes

from .floor import serve_until_stopped
from .stack import FIXED_MS, GPU_MODEL, PER_TEXT_MS

LEAD_MS = 8.0  # oracle: how long before the running call's due end the next one is sent
# A margin on the formula's due end, tuned with LEAD_MS (when it was tuned the double's calls
# also ended ~1 ms late; since 06c49fd they end on time, and the 80% was measured with it).
LATE_MS = 1.0
MAX_BATCH = 64  # texts per call at most, as embedq's worker (BATCH_SIZE)
MODES = ("greedy", "oracle")


def base64_vector(vector: list[float]) -> str:
    """A vector as the OpenAI SDK asks for it: base64 of little-endian float32."""
    return base64.b64encode(floats_to_bytes(vector)).decode("ascii")


async def embed_on_double(
    session: aiohttp.ClientSession, double_url: str, model: str, texts: list[str]
) -> list[str]:
    """One /api/embed call to the double: its vectors in base64, in `texts`' order."""
    body = orjson.dumps({"model": model, "input": texts})
    async with session.post(
        f"{double_url.rstrip('/')}/api/embed",
        data=body,
        headers={"Content-Type": "application/json"},
    ) as resp:
        resp.raise_for_status()
        vectors = orjson.loads(await resp.read())["embeddings"]
    return [base64_vector(v) for v in vectors]


class Batcher:
    """Texts in, base64 float32 vectors out, in calls to the double of up to `max_batch`.

    Greedy keeps one call in flight. The oracle keeps a second one waiting at the double:
    it is sent on a timer set from the running call's start and the formula's cost."""

    def __init__(
        self,
        double_url: str,
        *,
        mode: str = "greedy",
        lead_ms: float = LEAD_MS,
        max_batch: int = MAX_BATCH,
        model: str = GPU_MODEL,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self._url = double_url
        self._oracle = mode == "oracle"
        self._lead = lead_ms / 1000
        self._max_batch = max(1, max_batch)
        self._model = model
        self._pending: list[tuple[str, asyncio.Future[str]]] = []
        self._calls: list[int] = []  # texts of each call in flight, oldest (computing) first
        self._computing_since = 0.0  # loop time the oldest call began computing, as seen here
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.call_sizes: list[int] = []  # every call's texts, in sending order

    async def __aenter__(self) -> Batcher:
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def embed(self, texts: list[str]) -> list[str]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in texts]
        self._pending += zip(texts, futures, strict=True)
        self._kick()
        return list(await asyncio.gather(*futures))

    def _kick(self) -> None:
        if not self._pending:
            return
        if not self._calls:
            self._send()
        elif self._oracle and len(self._calls) == 1 and self._timer is None:
            due_ms = FIXED_MS + PER_TEXT_MS * self._calls[0] + LATE_MS
            at = self._computing_since + due_ms / 1000 - self._lead
            self._timer = asyncio.get_running_loop().call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._pending and len(self._calls) < 2:
            self._send()

    def _send(self) -> None:
        group = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        if not self._calls:
            self._computing_since = asyncio.get_running_loop().time()
        self._calls.append(len(group))
        self.call_sizes.append(len(group))
        task = asyncio.create_task(self._call(group), name="ideal-call")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, group: list[tuple[str, asyncio.Future[str]]]) -> None:
        assert self._session is not None
        try:
            texts = [text for text, _ in group]
            answers = await embed_on_double(self._session, self._url, self._model, texts)
        except Exception as exc:
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            # The next call first (the double is free or about to be), then the answers.
            self._calls.pop(0)
            if self._timer is not None:  # it was set for the call that just ended
                self._timer.cancel()
                self._timer = None
            self._computing_since = asyncio.get_running_loop().time()
            self._kick()
        for (_, fut), answer in zip(group, answers, strict=True):
            if not fut.done():
                fut.set_result(answer)


class Embedder(Protocol):
    async def embed(self, texts: list[str]) -> list[str]: ...


def create_app(batcher: Embedder) -> web.Application:
    """The OpenAI embeddings endpoint over `batcher`: base64 vectors, as the SDK asks."""

    async def embeddings(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        raw = body.get("input") if isinstance(body, dict) else None
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return web.json_response({"error": {"message": "input: text(s) expected"}}, status=400)
        try:
            vectors = await batcher.embed(texts)
        except (aiohttp.ClientError, KeyError, ValueError) as exc:
            return web.json_response({"error": {"message": f"the double: {exc}"}}, status=502)
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        answer = {"object": "list", "data": data, "model": body.get("model")}
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    return app


async def serve(double_url: str, mode: str, lead_ms: float, port: int) -> None:
    async with Batcher(double_url, mode=mode, lead_ms=lead_ms) as batcher:
        await serve_until_stopped(create_app(batcher), port)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A batcher with nothing in its way.")
    parser.add_argument("--double", required=True, help="the Ollama double's URL")
    parser.add_argument("--mode", choices=MODES, default="greedy")
    parser.add_argument("--lead-ms", type=float, default=LEAD_MS, help="oracle's lead")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.double, args.mode, args.lead_ms, args.port))


if __name__ == "__main__":
    main()
