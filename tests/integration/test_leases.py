"""Leases, expiry, retries, retention and the listener's recovery, against a real
PostgreSQL. Maintenance runs every 0.2 s in these tests (tests/helpers.make_settings)."""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient

from embedq_server.keys import POOL, QUEUE
from tests.helpers import CLIENT, WORKER, claim, wait_until


def vec(x: float) -> str:
    return base64.b64encode(struct.pack("<f", x)).decode()


async def submit(client: TestClient, inputs: Any, **extra: Any) -> str:
    resp = await client.post(
        "/v1/embeddings",
        json={"model": "m", "input": inputs, "wait_seconds": 0, **extra},
        headers=CLIENT,
    )
    assert resp.status == 202, await resp.text()
    return str((await resp.json())["id"])


async def post(client: TestClient, path: str, **body: Any) -> Any:
    return await client.post(path, json={"worker": "w", **body}, headers=WORKER)


async def task_status(client: TestClient, task_id: str) -> dict[str, Any]:
    resp = await client.get(f"/tasks/{task_id}", headers=CLIENT)
    result: dict[str, Any] = await resp.json()
    return result


async def item_rows(client: TestClient) -> list[asyncpg.Record]:
    pool = client.server.app[POOL]  # type: ignore[union-attr]
    return list(await pool.fetch("SELECT * FROM embedq_item ORDER BY id"))


async def test_two_workers_racing_a_lease_expiry(app_client):
    client = await app_client(lease_seconds=0.5)
    task_id = await submit(client, ["x", "y"])
    first = await claim(client, worker="slow")

    async def requeued() -> bool:
        return all(r["state"] == "pending" for r in await item_rows(client))

    await wait_until(requeued)
    second = await claim(client, worker="fast")
    assert sorted(i["id"] for i in second["items"]) == sorted(i["id"] for i in first["items"])
    # The slow worker's heartbeat and late result are refused and change nothing.
    assert (await post(client, "/worker/heartbeat", lease=first["lease"])).status == 409
    late = await post(
        client,
        "/worker/complete",
        lease=first["lease"],
        results=[{"id": i["id"], "embedding": vec(1.0), "tokens": 1} for i in first["items"]],
    )
    assert late.status == 409
    ok = await post(
        client,
        "/worker/complete",
        lease=second["lease"],
        results=[{"id": i["id"], "embedding": vec(2.0), "tokens": 1} for i in second["items"]],
    )
    assert ok.status == 200
    # And once completed, the slow worker still cannot overwrite it.
    again = await post(
        client,
        "/worker/complete",
        lease=first["lease"],
        results=[{"id": i["id"], "embedding": vec(1.0), "tokens": 1} for i in first["items"]],
    )
    assert again.status == 409
    body = await task_status(client, task_id)
    assert body["status"] == "completed"
    assert [d["embedding"] for d in body["result"]["data"]] == [[2.0], [2.0]]
    rows = await item_rows(client)
    assert [r["attempts"] for r in rows] == [2, 2]
    assert {r["worker"] for r in rows} == {"fast"}


async def test_heartbeats_keep_a_lease_alive(app_client):
    client = await app_client(lease_seconds=0.6)
    await submit(client, "x")
    batch = await claim(client)
    for _ in range(6):
        await asyncio.sleep(0.25)
        resp = await post(client, "/worker/heartbeat", lease=batch["lease"])
        assert resp.status == 200
        assert (await resp.json())["held"] == 1
    rows = await item_rows(client)
    assert rows[0]["state"] == "processing" and rows[0]["attempts"] == 1


async def test_expired_leases_fail_after_max_attempts_with_a_reason(app_client):
    client = await app_client(lease_seconds=0.3, max_attempts=2)
    task_id = await submit(client, "poison")
    for _ in range(2):
        batch = await claim(client, wait=5)
        assert len(batch["items"]) == 1

    async def failed() -> bool:
        return (await task_status(client, task_id))["status"] == "failed"

    await wait_until(failed)
    body = await task_status(client, task_id)
    assert "gave up after 2 attempts" in body["error"]["message"]
    assert body["error"]["code"] == "attempts_exhausted"
    # Nothing left to claim: no tight retry loop.
    assert (await claim(client))["items"] == []
    result = await client.get(f"/tasks/{task_id}/result", headers=CLIENT)
    assert result.status == 502


async def test_worker_failures_retry_then_fail_and_bad_input_fails_alone(app_client):
    client = await app_client(max_attempts=2)
    task_id = await submit(client, ["good", "bad"])
    batch = await claim(client)
    good, bad = batch["items"]
    resp = await post(
        client,
        "/worker/complete",
        lease=batch["lease"],
        results=[{"id": good["id"], "embedding": vec(1.0), "tokens": 1}],
        failures=[
            {
                "id": bad["id"],
                "error": "the input length exceeds the context length",
                "code": "input_rejected",
                "retry": False,
            }
        ],
    )
    assert resp.status == 200
    body = await task_status(client, task_id)
    assert body["status"] == "failed"
    assert body["counts"]["completed"] == 1 and body["counts"]["failed"] == 1
    assert "context length" in body["error"]["message"]
    # A waiting client gets a 400 naming the input, not a crash.
    answer = await client.get(f"/tasks/{task_id}/result", headers=CLIENT)
    assert answer.status == 400
    assert (await answer.json())["error"]["param"] == "input"


async def test_retryable_failure_goes_back_to_pending(app_client):
    client = await app_client(max_attempts=3)
    await submit(client, "x")
    batch = await claim(client)
    await post(
        client,
        "/worker/complete",
        lease=batch["lease"],
        failures=[
            {
                "id": batch["items"][0]["id"],
                "error": "ollama busy",
                "code": "backend_error",
                "retry": True,
            }
        ],
    )
    again = await claim(client)
    assert [i["id"] for i in again["items"]] == [batch["items"][0]["id"]]
    assert again["items"][0]["attempts"] == 2


async def test_release_hands_back_without_counting_an_attempt(app_client):
    client = await app_client()
    await submit(client, ["a", "b"])
    batch = await claim(client)
    resp = await post(
        client, "/worker/release", lease=batch["lease"], ids=[i["id"] for i in batch["items"]]
    )
    assert sorted((await resp.json())["released"]) == sorted(i["id"] for i in batch["items"])
    again = await claim(client)
    assert [i["attempts"] for i in again["items"]] == [1, 1]


async def test_finished_tasks_are_pruned_after_result_ttl(app_client):
    client = await app_client(result_ttl=0.5)
    task_id = await submit(client, "x")
    batch = await claim(client)
    await post(
        client,
        "/worker/complete",
        lease=batch["lease"],
        results=[{"id": batch["items"][0]["id"], "embedding": vec(1.0), "tokens": 1}],
    )
    assert (await task_status(client, task_id))["status"] == "completed"
    pending_id = await submit(client, "still waiting")

    async def pruned() -> bool:
        resp = await client.get(f"/tasks/{task_id}", headers=CLIENT)
        return resp.status == 404

    await wait_until(pruned)
    assert await item_rows(client) != []  # the unfinished task and its input stay
    assert (await task_status(client, pending_id))["status"] == "pending"


async def test_waiters_recover_when_the_listener_connection_is_killed(app_client):
    client = await app_client(backstop_interval=30.0)
    app = client.server.app  # type: ignore[union-attr]
    request = asyncio.create_task(
        client.post(
            "/v1/embeddings", json={"model": "m", "input": "x", "wait_seconds": 20}, headers=CLIENT
        )
    )
    batch = await claim(client, wait=5)
    listener = app[QUEUE].listener
    old_pid = listener.backend_pid
    assert await app[POOL].fetchval("SELECT pg_terminate_backend($1)", old_pid)

    async def reconnected() -> bool:
        return listener.connected and listener.backend_pid not in (None, old_pid)

    await wait_until(reconnected)
    await post(
        client,
        "/worker/complete",
        lease=batch["lease"],
        results=[{"id": batch["items"][0]["id"], "embedding": vec(3.0), "tokens": 1}],
    )
    answer = await asyncio.wait_for(request, 15)
    assert answer.status == 200
    assert (await answer.json())["data"][0]["embedding"] == [3.0]


async def test_a_worker_that_hangs_up_mid_long_poll_leases_nothing(db_url):
    # A real AppRunner, as in production: aiohttp does not cancel a handler whose client
    # hung up (the test server would, and hide the problem).
    from aiohttp import web

    from embedq_server.app import create_app
    from tests.conftest import free_port
    from tests.helpers import make_settings

    app = create_app(make_settings(backstop_interval=0.2), db_url)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            claimer = asyncio.create_task(
                session.post(
                    f"{base}/worker/claim",
                    json={"worker": "gone", "models": ["m"], "wait_seconds": 20},
                    headers=WORKER,
                )
            )
            await asyncio.sleep(0.5)
            claimer.cancel()  # the worker stops: its HTTP request is dropped
            await asyncio.sleep(0.3)
            async with session.post(
                f"{base}/v1/embeddings",
                json={"model": "m", "input": "after the hang-up", "wait_seconds": 0},
                headers=CLIENT,
            ) as resp:
                assert resp.status == 202
            await asyncio.sleep(1.0)  # the orphaned handler's loop has run by now
        rows = list(await app[POOL].fetch("SELECT state, attempts FROM embedq_item"))
        assert [(r["state"], r["attempts"]) for r in rows] == [("pending", 0)]
    finally:
        await runner.cleanup()


async def test_pool_connections_keep_the_idle_transaction_timeout(app_client):
    client = await app_client()
    pool = client.server.app[POOL]  # type: ignore[union-attr]
    for _ in range(3):  # across releases (no RESET ALL undoes it)
        assert await pool.fetchval("SHOW idle_in_transaction_session_timeout") == "1min"
