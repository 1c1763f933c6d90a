"""Small helpers shared by the tests: settings for tests, and a fake worker over HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from embedq_server.settings import Settings
from embedq_worker.server_client import ServerClient

CLIENT_TOKEN = "client-token-a"
OTHER_CLIENT_TOKEN = "client-token-b"
WORKER_TOKEN = "worker-token-1"

CLIENT = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
OTHER_CLIENT = {"Authorization": f"Bearer {OTHER_CLIENT_TOKEN}"}
WORKER = {"Authorization": f"Bearer {WORKER_TOKEN}"}


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "auth_tokens": (CLIENT_TOKEN, OTHER_CLIENT_TOKEN),
        "worker_tokens": (WORKER_TOKEN,),
        "default_wait": 5.0,
        "maintenance_interval": 0.2,
        "backstop_interval": 1.0,
    }
    values.update(overrides)
    return Settings(**values)


async def claim(
    client: TestClient,
    models: list[str] | None = None,
    max_items: int = 32,
    wait: float = 0,
    worker: str = "w1",
) -> dict[str, Any]:
    resp = await client.post(
        "/worker/claim",
        json={
            "worker": worker,
            "models": models or ["m"],
            "max_items": max_items,
            "wait_seconds": wait,
        },
        headers=WORKER,
    )
    assert resp.status == 200, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def wait_until(predicate: Any, timeout: float = 30.0, poll: float = 0.02) -> None:
    """Wait for `predicate()` (async) to hold; the timeout only stops a test whose code
    broke, it is never what a test measures."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(poll)


def server_client(client: TestClient, **kw: Any) -> ServerClient:
    """embedq-worker's client to the server under test, as worker w1 of model m."""
    return ServerClient(
        str(client.make_url("")), WORKER_TOKEN, name="w1", models=["m"], backend="test", **kw
    )
