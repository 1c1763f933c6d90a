"""The worker's runner against the real server (in-process) and an Ollama double, in burst
mode: backend failures are retried without losing or duplicating work, a missing model
fails its tasks clearly, and one bad input fails alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from embedq_server.keys import QUEUE
from embedq_worker.backends.ollama import OllamaBackend
from embedq_worker.runner import Runner
from embedq_worker.server_client import ServerClient
from embedq_worker.settings import WorkerSettings
from tests.doubles.common import control, serve, stats
from tests.doubles.ollama import OLLAMA, create_ollama_app
from tests.doubles.vectors import expected_vector
from tests.helpers import CLIENT, WORKER_TOKEN

MODEL = "nomic-embed-text"


@pytest.fixture
async def ollama() -> AsyncIterator[tuple[str, web.Application]]:
    app = create_ollama_app(context_chars=50)
    async with serve(app) as url:
        yield url, app


async def submit(client: TestClient, inputs: list[str]) -> str:
    resp = await client.post(
        "/v1/embeddings",
        json={"model": MODEL, "input": inputs, "wait_seconds": 0},
        headers=CLIENT,
    )
    assert resp.status == 202
    return str((await resp.json())["id"])


async def run_burst(
    client: TestClient,
    ollama_url: str,
    after_start: Any = None,
    on_batch: Any = None,
    **settings: Any,
) -> Runner:
    worker_settings = WorkerSettings(
        server_url=str(client.make_url("")).rstrip("/"),
        worker_token=WORKER_TOKEN,
        models=MODEL,
        burst=True,
        poll_interval=0.05,
        **settings,
    )
    backend = OllamaBackend([ollama_url])
    try:
        await backend.start([MODEL])
        if after_start is not None:
            after_start()
        async with ServerClient(
            worker_settings.server_url,
            WORKER_TOKEN,
            name="runner-test",
            models=[MODEL],
            backend="ollama",
        ) as server:
            runner = Runner(worker_settings, server, {MODEL: backend}, on_batch=on_batch)
            await asyncio.wait_for(runner.run(), 60)
            return runner
    finally:
        await backend.close()


async def task(client: TestClient, task_id: str) -> dict[str, Any]:
    body: dict[str, Any] = await (await client.get(f"/tasks/{task_id}", headers=CLIENT)).json()
    return body


def assert_vectors(body: dict[str, Any], texts: list[str]) -> None:
    assert body["status"] == "completed", body
    for item in body["result"]["data"]:
        expected = expected_vector(MODEL, texts[item["index"]])
        assert all(abs(a - b) < 1e-6 for a, b in zip(item["embedding"], expected, strict=True))


async def test_burst_mode_computes_everything_in_batches(app_client, ollama):
    client = await app_client()
    url, _ = ollama
    texts = [f"burst {i}" for i in range(50)]
    task_id = await submit(client, texts)
    runner = await run_burst(client, url, batch_size=16)
    assert_vectors(await task(client, task_id), texts)
    calls = await stats(url)
    assert calls["texts"] == 50 and calls["max_batch"] == 16  # batched, each text once
    assert runner.stats.batches == 4


async def test_a_batch_is_counted_and_logged_after_its_results_are_posted(app_client, ollama):
    """The bookkeeping took CPU from the post on the path of an idle request."""
    client = await app_client()
    url, _ = ollama
    queue = client.server.app[QUEUE]
    events: list[str] = []
    complete = queue.complete

    async def posted(*args: Any, **kwargs: Any) -> Any:
        events.append("posted")
        return await complete(*args, **kwargs)

    queue.complete = posted
    task_id = await submit(client, ["one", "two", "three"])
    runner = await run_burst(
        client, url, batch_size=4, on_batch=lambda *_: events.append("counted")
    )
    assert_vectors(await task(client, task_id), ["one", "two", "three"])
    assert runner.stats.batches == 1
    assert events == ["posted", "counted"]


async def test_busy_backend_is_retried_without_loss_or_duplicates(app_client, ollama):
    client = await app_client()
    url, _ = ollama
    texts = [f"busy {i}" for i in range(10)]
    task_id = await submit(client, texts)
    await control(url, fail_next=3, status=503)
    await run_burst(client, url)
    assert_vectors(await task(client, task_id), texts)
    assert (await stats(url))["failed"] == 3
    assert (await task(client, task_id))["counts"]["completed"] == 10


async def test_backend_down_then_back_is_retried(app_client, ollama):
    client = await app_client()
    url, _ = ollama
    texts = ["down 1", "down 2"]
    task_id = await submit(client, texts)
    await control(url, down=True)

    async def come_back() -> None:
        await asyncio.sleep(1.0)
        await control(url, down=False)

    back = asyncio.create_task(come_back())
    await run_burst(client, url)
    await back
    assert_vectors(await task(client, task_id), texts)


async def test_model_gone_from_ollama_fails_clearly_without_looping(app_client, ollama):
    client = await app_client()
    url, app = ollama
    task_id = await submit(client, ["orphan"])

    def remove_model() -> None:  # after the worker checked it at start, as `ollama rm` would
        app[OLLAMA].models = [m for m in app[OLLAMA].models if not m.startswith(MODEL)]

    runner_stats = (await run_burst(client, url, after_start=remove_model)).stats
    body = await task(client, task_id)
    assert body["status"] == "failed"
    assert body["error"]["code"] == "model_not_found"
    assert "not found" in body["error"]["message"]
    assert runner_stats.failed == 1
    assert (await stats(url))["calls"] <= 1


async def test_one_over_long_input_fails_alone(app_client, ollama):
    client = await app_client()
    url, _ = ollama
    texts = ["short one", "x" * 200, "short two", "short three"]
    task_id = await submit(client, texts)
    await run_burst(client, url)
    body = await task(client, task_id)
    assert body["status"] == "failed"
    assert body["counts"] == {"pending": 0, "processing": 0, "completed": 3, "failed": 1}
    assert body["error"]["code"] == "input_rejected"
    assert "context length" in body["error"]["message"]
