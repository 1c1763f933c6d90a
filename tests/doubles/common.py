"""What the HTTP test doubles share: a GPU-like gate that computes one call at a time, failure
injection through `POST /_control`, call statistics at `GET /_stats`, and ways to serve a
double inside a test's event loop, as a process, or from a test as a child process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from tests.doubles.vectors import DEFAULT_DIM

DEFAULT_MAX_QUEUE = 512  # calls waiting for the gate before "busy" (Ollama's OLLAMA_MAX_QUEUE)
PROCESS_START_TIMEOUT = 20.0  # seconds for a child double to print its URL
REPO_ROOT = Path(__file__).resolve().parents[2]


class Busy(Exception):
    """More calls are waiting for the gate than `max_queue` allows."""


@dataclass
class DoubleState:
    """Cost knobs, injected faults and statistics of one double."""

    fixed_ms: float = 0.0  # cost of every call, as a GPU's per-call overhead
    per_text_ms: float = 0.0  # cost of every input of a call
    max_queue: int = DEFAULT_MAX_QUEUE
    # Set through POST /_control.
    fail_next: int = 0  # the next N embedding calls fail with fail_status
    fail_status: int = 503
    delay_ms: float = 0.0  # extra latency of each embedding call, outside the gate
    down: bool = False  # drop every connection except /_control and /_stats
    # Reported at GET /_stats.
    calls: int = 0
    texts: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    failed: int = 0  # calls answered with an injected failure
    busy: int = 0  # calls refused because the queue was full
    pending: int = 0
    max_concurrent: int = 0  # most embedding calls in the double at once
    gate_seconds: float = 0.0  # the modelled GPU's busy time: each call's cost, or its body's
    last_request: dict[str, Any] = field(default_factory=dict)
    _waiting: int = field(default=0, init=False)
    _gate: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    _free_at: float = field(default=0.0, init=False)  # perf_counter when the GPU frees up

    def take_failure(self) -> int | None:
        """The status to fail this call with, when a failure was injected."""
        if self.fail_next <= 0:
            return None
        self.fail_next -= 1
        self.failed += 1
        return self.fail_status

    @asynccontextmanager
    async def computing(self, body: dict[str, Any], n_texts: int) -> AsyncIterator[None]:
        """Hold the gate for one call: calls queue as on one GPU and pay fixed + per-text cost,
        so batching pays here as it does on real hardware. The body (making the vectors)
        runs at the start of the call's GPU time, as a GPU computes them, and the gate is
        held for the rest of the cost: made before the gate, they kept a call that met an
        idle GPU from starting for the double's own Python work.

        The GPU's time is kept apart from the event loop's: a call that queued starts when
        the call ahead of it was due to end, not when this process got round to waking it.
        Timed from its wake-up, every queued call paid the loop's lateness on top of its
        cost (1-1.4 ms per call on the benchmark's two shared cores: 16-text calls kept
        back to back reached 90% of their own formula, not 100%); a GPU does not wait for
        its host's scheduler between queued kernels."""
        self.last_request = body
        self.pending += 1
        self.max_concurrent = max(self.max_concurrent, self.pending)
        try:
            if self.delay_ms:
                await asyncio.sleep(self.delay_ms / 1000)
            if self._waiting >= self.max_queue:
                self.busy += 1
                raise Busy
            self._waiting += 1
            arrived = time.perf_counter()
            try:
                await self._gate.acquire()
            finally:
                self._waiting -= 1
            start = max(arrived, self._free_at)  # the GPU takes it on arrival, or when free
            try:
                self.calls += 1
                self.texts += n_texts
                self.batch_sizes.append(n_texts)
                yield
                cost = (self.fixed_ms + self.per_text_ms * n_texts) / 1000
                self._free_at = max(start + cost, time.perf_counter())  # or its body's time
                left = self._free_at - time.perf_counter()
                if left > 0:
                    await asyncio.sleep(left)
            finally:
                self._free_at = max(self._free_at, start)  # a failed body cost nothing more
                self.gate_seconds += self._free_at - start
                self._gate.release()
        finally:
            self.pending -= 1

    def controls(self) -> dict[str, Any]:
        return {
            "fail_next": self.fail_next,
            "status": self.fail_status,
            "delay_ms": self.delay_ms,
            "down": self.down,
        }

    def stats(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "texts": self.texts,
            "max_batch": max(self.batch_sizes, default=0),
            "batch_sizes": self.batch_sizes,
            "failed": self.failed,
            "busy": self.busy,
            "max_concurrent": self.max_concurrent,
            "gate_seconds": self.gate_seconds,
            "last_request": self.last_request,
        }

    def reset_stats(self) -> None:
        self.calls = self.texts = self.failed = self.busy = self.max_concurrent = 0
        self.gate_seconds = 0.0
        self.batch_sizes = []
        self.last_request = {}


STATE = web.AppKey("double_state", DoubleState)


async def read_json(request: web.Request) -> Any:
    """The request's JSON body, or None when it is not JSON."""
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


@web.middleware
async def _down_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A double that is "down" drops connections unanswered, as a crashed server would."""
    if request.app[STATE].down and not request.path.startswith("/_"):
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=503)
    return await handler(request)


async def _control(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await read_json(request)
    if not isinstance(body, dict):
        return web.json_response({"error": "expected a JSON object"}, status=400)
    if "fail_next" in body:
        state.fail_next = int(body["fail_next"])
    if "status" in body:
        state.fail_status = int(body["status"])
    if "delay_ms" in body:
        state.delay_ms = float(body["delay_ms"])
    if "down" in body:
        state.down = bool(body["down"])
    if body.get("reset_stats"):
        state.reset_stats()
    return web.json_response(state.controls())


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats())


def new_app(state: DoubleState, *middlewares: Middleware) -> web.Application:
    """An application with the state, the down switch and the test-control routes."""
    app = web.Application(
        middlewares=[_down_middleware, *middlewares], client_max_size=256 * 1024**2
    )
    app[STATE] = state
    app.router.add_post("/_control", _control)
    app.router.add_get("/_stats", _stats)
    return app


@asynccontextmanager
async def serve(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `app` in the running loop and yield its real URL (port 0 picks a free port)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.create_server((host, port), reuse_port=False)
    try:
        site = web.SockSite(runner, sock)
        await site.start()
        bound_port = sock.getsockname()[1]
        yield f"http://{host}:{bound_port}"
    finally:
        await runner.cleanup()
        sock.close()


def add_common_arguments(parser: argparse.ArgumentParser, default_port: int) -> None:
    """The flags every double takes."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port, help="0 picks a free port")
    parser.add_argument("--dim", type=int, default=DEFAULT_DIM, help="vector size")
    parser.add_argument("--fixed-ms", type=float, default=0.0, help="cost of each call")
    parser.add_argument("--per-text-ms", type=float, default=0.0, help="cost of each input")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE)


def run_until_signalled(app: web.Application, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, printing `listening on URL` once the port listens."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with serve(app, host, port) as url:
            print(f"listening on {url}", flush=True)
            await stop.wait()

    asyncio.run(main())


@contextmanager
def spawn_double(module: str, *args: str) -> Iterator[str]:
    """Run a double as a child process (`module` like "tests.doubles.ollama", `args` its flags)
    and yield its URL; the child is stopped on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--port", "0", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = _read_line(proc.stdout, PROCESS_START_TIMEOUT)
        if not line.startswith("listening on "):
            raise RuntimeError(f"{module} did not start: {line!r}")
        yield line.removeprefix("listening on ").strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _read_line(stream: IO[str], timeout: float) -> str:
    """One line from a child's stdout, without hanging on a child that never writes it."""
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0] if result else ""


async def control(url: str, **fields: Any) -> dict[str, Any]:
    """Set a double's injected faults (fail_next, status, delay_ms, down, reset_stats)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/_control", json=fields) as resp,
    ):
        resp.raise_for_status()
        result: dict[str, Any] = await resp.json()
        return result


async def stats(url: str) -> dict[str, Any]:
    """A double's call statistics."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/_stats") as resp:
        resp.raise_for_status()
        result: dict[str, Any] = await resp.json()
        return result
