"""BACKEND_DEPTH against the real server (in-process) and an Ollama double that costs time
per call: by default the next call waits at the backend while one computes, never more than
that; with BACKEND_DEPTH=1 calls go one at a time; and burst mode still ends when the queue
is empty.

The double serialises calls behind its gate, as one GPU does, and counts the most calls it
held at once (`max_concurrent` at /_stats): that count, not a clock, tells what the worker
kept in flight. The gate is held by the test until the calls it waits for have arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from embedq_worker.runner import Runner
from embedq_worker.settings import BACKEND_DEPTH
from tests.doubles.common import STATE, serve, stats
from tests.doubles.ollama import create_ollama_app
from tests.helpers import wait_until
from tests.integration.test_runner import assert_vectors, run_burst, submit, task

FIXED_MS = 50.0  # each call holds the double's gate this long, as a GPU's per-call cost
BATCH = 8
TEXTS = 6 * BATCH  # several full batches


@pytest.fixture
async def slow_ollama() -> AsyncIterator[tuple[str, web.Application]]:
    """The Ollama double of test_runner's `ollama` fixture, with a fixed cost per call."""
    app = create_ollama_app(context_chars=50, fixed_ms=FIXED_MS)
    async with serve(app) as url:
        yield url, app


async def run_with_gate_held(
    client: Any, url: str, app: web.Application, calls: int, **settings: Any
) -> Runner:
    """Run the worker in burst mode with the double's gate held (no call can compute) until
    `calls` calls are in the double at once, then let it compute everything."""
    gate = app[STATE]._gate
    await gate.acquire()
    worker = asyncio.create_task(run_burst(client, url, batch_size=BATCH, **settings))
    try:

        async def arrived() -> bool:
            if worker.done():  # a worker that died says why, rather than a timeout
                worker.result()
            return bool((await stats(url))["max_concurrent"] >= calls)

        await wait_until(arrived)
    finally:
        gate.release()
    return await worker


async def test_default_depth_keeps_the_next_call_waiting_at_the_backend(app_client, slow_ollama):
    assert BACKEND_DEPTH == 2
    client = await app_client()
    url, app = slow_ollama
    texts = [f"depth {i}" for i in range(TEXTS)]
    task_id = await submit(client, texts)
    runner = await run_with_gate_held(client, url, app, calls=2)  # BACKEND_DEPTH unset
    assert runner.slots == 2
    assert_vectors(await task(client, task_id), texts)
    seen = await stats(url)
    assert seen["max_concurrent"] == 2  # one computing, the next waiting; never a third
    assert seen["batch_sizes"] == [BATCH] * (TEXTS // BATCH)  # each text computed once
    assert runner.stats.batches == TEXTS // BATCH and runner.stats.texts == TEXTS


async def test_depth_one_sends_one_call_at_a_time(app_client, slow_ollama):
    client = await app_client()
    url, app = slow_ollama
    texts = [f"one at a time {i}" for i in range(TEXTS)]
    task_id = await submit(client, texts)
    runner = await run_with_gate_held(client, url, app, calls=1, backend_depth=1)
    assert runner.slots == 1
    assert_vectors(await task(client, task_id), texts)
    seen = await stats(url)
    # Every call found the gate free on arrival: none waited behind another.
    assert seen["max_concurrent"] == 1
    assert seen["batch_sizes"] == [BATCH] * (TEXTS // BATCH)


async def test_burst_mode_ends_on_an_empty_queue(app_client, slow_ollama):
    client = await app_client()
    url, _ = slow_ollama
    runner = await run_burst(client, url, batch_size=BATCH)
    assert runner.stats.batches == 0 and runner.stats.empty_claims >= 1
    assert (await stats(url))["calls"] == 0


@pytest.mark.parametrize("count", [TEXTS, TEXTS + 3], ids=["full-batches", "partial-last"])
async def test_burst_mode_ends_once_the_queue_is_drained(app_client, slow_ollama, count):
    """Whether the last claim came back full (more might be waiting) or not, the worker
    stops once a claim finds the queue empty and the batches in flight are posted."""
    client = await app_client()
    url, _ = slow_ollama
    texts = [f"drain {i}" for i in range(count)]
    task_id = await submit(client, texts)
    runner = await run_burst(client, url, batch_size=BATCH)
    body = await task(client, task_id)
    assert_vectors(body, texts)
    assert body["counts"]["completed"] == count
    assert runner.stats.texts == count and runner.stats.empty_claims >= 1
    assert (await stats(url))["texts"] == count
