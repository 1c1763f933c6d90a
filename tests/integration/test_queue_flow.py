"""The queue through its HTTP API, in-process, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import time
from typing import Any

from aiohttp.test_utils import TestClient

from embedq_server.logs import RequestIdFilter
from tests.helpers import CLIENT, OTHER_CLIENT, WORKER, claim


def vec(*values: float) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


async def complete(client: TestClient, lease: str, results: list[dict[str, Any]], **kw: Any):
    return await client.post(
        "/worker/complete",
        json={"worker": "w1", "lease": lease, "results": results, **kw},
        headers=WORKER,
    )


async def test_request_waits_and_returns_vectors_in_order(app_client):
    client = await app_client()
    request = asyncio.create_task(
        client.post("/v1/embeddings", json={"model": "m", "input": ["a", "b", "c"]}, headers=CLIENT)
    )
    batch = await claim(client, wait=5)
    assert [i["input"] for i in batch["items"]] == ["a", "b", "c"]
    results = [
        {"id": item["id"], "embedding": vec(float(n), 0.5), "tokens": 2}
        for n, item in enumerate(batch["items"])
    ]
    resp = await complete(client, batch["lease"], list(reversed(results)))
    assert resp.status == 200
    answer = await request
    assert answer.status == 200
    body = await answer.json()
    assert body["object"] == "list" and body["model"] == "m"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert [d["embedding"] for d in body["data"]] == [[0.0, 0.5], [1.0, 0.5], [2.0, 0.5]]
    assert body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}


async def test_base64_is_little_endian_float32(app_client):
    client = await app_client()
    request = asyncio.create_task(
        client.post(
            "/v1/embeddings",
            json={"model": "m", "input": "x", "encoding_format": "base64"},
            headers=CLIENT,
        )
    )
    batch = await claim(client, wait=5)
    await complete(
        client,
        batch["lease"],
        [{"id": batch["items"][0]["id"], "embedding": vec(0.25, -1.5), "tokens": 1}],
    )
    body = await (await request).json()
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == (0.25, -1.5)


async def test_long_poll_returns_when_result_commits_not_on_a_timer(app_client):
    # A backstop of 20 s means only NOTIFY can wake the waiter quickly.
    client = await app_client(backstop_interval=20.0)
    request = asyncio.create_task(
        client.post(
            "/v1/embeddings", json={"model": "m", "input": "x", "wait_seconds": 25}, headers=CLIENT
        )
    )
    batch = await claim(client, wait=5)
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await complete(
        client,
        batch["lease"],
        [{"id": batch["items"][0]["id"], "embedding": vec(1.0), "tokens": 1}],
    )
    answer = await request
    assert answer.status == 200
    assert time.monotonic() - started < 5.0  # well under the 20 s backstop


async def test_worker_claim_long_polls_until_work_arrives(app_client):
    client = await app_client(backstop_interval=20.0)
    claimer = asyncio.create_task(claim(client, wait=25))
    await asyncio.sleep(0.5)
    assert not claimer.done()
    started = time.monotonic()
    await client.post(
        "/v1/embeddings", json={"model": "m", "input": "x", "wait_seconds": 0}, headers=CLIENT
    )
    batch = await claimer
    assert [i["input"] for i in batch["items"]] == ["x"]
    assert time.monotonic() - started < 5.0


async def test_wait_seconds_zero_returns_task_id_then_poll(app_client):
    client = await app_client()
    resp = await client.post(
        "/v1/embeddings",
        json={"model": "m", "input": ["p", "q"], "wait_seconds": 0},
        headers=CLIENT,
    )
    assert resp.status == 202
    task_id = (await resp.json())["id"]
    status = await (await client.get(f"/tasks/{task_id}", headers=CLIENT)).json()
    assert status["status"] == "pending" and status["inputs"] == 2
    pending = await client.get(f"/tasks/{task_id}/result", headers=CLIENT)
    assert pending.status == 202
    batch = await claim(client)
    status = await (await client.get(f"/tasks/{task_id}", headers=CLIENT)).json()
    assert status["status"] == "processing"
    await complete(
        client,
        batch["lease"],
        [{"id": i["id"], "embedding": vec(1.0), "tokens": 1} for i in batch["items"]],
    )
    status = await (await client.get(f"/tasks/{task_id}", headers=CLIENT)).json()
    assert status["status"] == "completed"
    assert len(status["result"]["data"]) == 2
    assert status["finished_at"] is not None
    result = await client.get(f"/tasks/{task_id}/result", headers=CLIENT)
    assert result.status == 200
    assert len((await result.json())["data"]) == 2
    # Another client's token cannot see it.
    other = await client.get(f"/tasks/{task_id}", headers=OTHER_CLIENT)
    assert other.status == 404


async def test_sdk_style_timeout_is_retryable_and_retry_attaches(app_client):
    client = await app_client(default_wait=0.5)
    body = {"model": "m", "input": ["same", "inputs"]}
    first = await client.post("/v1/embeddings", json=body, headers=CLIENT)
    assert first.status == 503
    assert first.headers["Retry-After"] == "1"
    assert first.headers["X-Should-Retry"] == "true"
    task_id = first.headers["X-Embedq-Task"]
    error = (await first.json())["error"]
    assert task_id in error["message"] and error["code"] == "task_pending"
    # The retry (same body, same client) attaches to the same task, it does not add work.
    retry = asyncio.create_task(client.post("/v1/embeddings", json=body, headers=CLIENT))
    batch = await claim(client, wait=5)
    assert len(batch["items"]) == 2
    await complete(
        client,
        batch["lease"],
        [{"id": i["id"], "embedding": vec(2.0), "tokens": 1} for i in batch["items"]],
    )
    answer = await retry
    assert answer.status == 200
    assert answer.headers["X-Embedq-Task"] == task_id
    assert (await claim(client))["items"] == []


async def test_one_request_spreads_over_several_workers(app_client):
    client = await app_client()
    texts = [f"t{i}" for i in range(100)]
    request = asyncio.create_task(
        client.post("/v1/embeddings", json={"model": "m", "input": texts}, headers=CLIENT)
    )
    batches = []
    while sum(len(b["items"]) for b in batches) < 100:
        batches.append(await claim(client, max_items=30, wait=5, worker=f"w{len(batches)}"))
    assert len(batches) == 4
    for batch in reversed(batches):  # complete out of order
        await complete(
            client,
            batch["lease"],
            [
                {"id": i["id"], "embedding": vec(float(texts.index(i["input"]))), "tokens": 1}
                for i in batch["items"]
            ],
        )
    body = await (await request).json()
    assert [d["embedding"][0] for d in body["data"]] == [float(i) for i in range(100)]


async def test_different_dimensions_never_share_a_batch(app_client):
    client = await app_client()
    for n, dims in enumerate((None, 64, None, 64)):
        payload: dict[str, Any] = {"model": "m", "input": f"x{n}", "wait_seconds": 0}
        if dims:
            payload["dimensions"] = dims
        await client.post("/v1/embeddings", json=payload, headers=CLIENT)
    first = await claim(client)
    second = await claim(client)
    assert {i["dimensions"] for i in first["items"]} == {None}
    assert {i["dimensions"] for i in second["items"]} == {64}
    assert len(first["items"]) == len(second["items"]) == 2


async def test_claim_takes_only_the_workers_models(app_client):
    client = await app_client()
    await client.post(
        "/v1/embeddings", json={"model": "other", "input": "x", "wait_seconds": 0}, headers=CLIENT
    )
    assert (await claim(client, models=["m"]))["items"] == []
    assert len((await claim(client, models=["other"]))["items"]) == 1


async def test_concurrent_claimers_never_get_the_same_item(app_client):
    client = await app_client()
    await client.post(
        "/v1/embeddings",
        json={"model": "m", "input": [f"x{i}" for i in range(500)], "wait_seconds": 0},
        headers=CLIENT,
    )
    batches = await asyncio.gather(*(claim(client, max_items=7, worker=f"w{n}") for n in range(40)))
    ids = [i["id"] for b in batches for i in b["items"]]
    assert len(ids) == len(set(ids)) == 280
    assert all(len(b["items"]) == 7 for b in batches)


async def test_late_or_duplicate_results_are_refused(app_client):
    client = await app_client()
    await client.post(
        "/v1/embeddings", json={"model": "m", "input": "x", "wait_seconds": 0}, headers=CLIENT
    )
    batch = await claim(client)
    result = [{"id": batch["items"][0]["id"], "embedding": vec(1.0), "tokens": 1}]
    assert (await complete(client, batch["lease"], result)).status == 200
    again = await complete(client, batch["lease"], [{**result[0], "embedding": vec(9.0)}])
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "lease_lost"


async def test_health_needs_no_token(app_client):
    client = await app_client()
    resp = await client.get("/health")
    assert resp.status == 200
    assert (await resp.json())["database"] == "up"


async def test_every_response_carries_a_request_id(app_client, caplog):
    caplog.set_level(logging.INFO, logger="embedq.request")
    caplog.handler.addFilter(RequestIdFilter())  # as setup_logging's handler has
    client = await app_client()
    resp = await client.get("/health", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"
    fresh = await client.get("/v1/models", headers={"X-Request-Id": "bad id with spaces"})
    assert fresh.headers["X-Request-Id"] != "bad id with spaces"
    assert len(fresh.headers["X-Request-Id"]) == 16
    lines = [r for r in caplog.records if r.name == "embedq.request"]
    health = [r for r in lines if "path=/health status=200" in r.getMessage()]
    # Written after the answer, and still with the request's id.
    assert [getattr(r, "request_id", None) for r in health] == ["abc-123"]


async def test_a_model_nobody_serves_waits_and_the_task_says_so(app_client):
    client = await app_client()
    resp = await client.post(
        "/v1/embeddings",
        json={"model": "lonely", "input": "x", "wait_seconds": 0},
        headers=CLIENT,
    )
    task_id = (await resp.json())["id"]
    body = await (await client.get(f"/tasks/{task_id}", headers=CLIENT)).json()
    assert body["status"] == "pending"
    assert "no live worker serves model lonely" in body["note"]
    # Once a worker for it is alive, the note goes away.
    await claim(client, models=["lonely"], worker="lonely-worker")
    await asyncio.sleep(2.1)  # the served-models view is cached for 2 s
    body = await (await client.get(f"/tasks/{task_id}", headers=CLIENT)).json()
    assert body["note"] is None


async def test_reject_policy_refuses_a_model_nobody_serves(app_client):
    client = await app_client(unserved_model="reject")
    resp = await client.post(
        "/v1/embeddings",
        json={"model": "lonely", "input": "x", "wait_seconds": 0},
        headers=CLIENT,
    )
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    await claim(client, models=["served"])  # registers a live worker serving it
    await asyncio.sleep(2.1)
    ok = await client.post(
        "/v1/embeddings",
        json={"model": "served", "input": "x", "wait_seconds": 0},
        headers=CLIENT,
    )
    assert ok.status == 202


async def test_two_server_processes_wake_each_other(app_client):
    # Two servers on one database, notifications as the only path (20 s backstops).
    front = await app_client(backstop_interval=20.0)
    back = await app_client(backstop_interval=20.0)
    claimer = asyncio.create_task(claim(back, wait=25))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    request = asyncio.create_task(
        front.post(
            "/v1/embeddings",
            json={"model": "m", "input": "x", "wait_seconds": 25},
            headers=CLIENT,
        )
    )
    batch = await claimer  # woken by front's NOTIFY, not by a timer
    assert [i["input"] for i in batch["items"]] == ["x"]
    resp = await back.post(
        "/worker/complete",
        json={
            "worker": "w",
            "lease": batch["lease"],
            "results": [{"id": batch["items"][0]["id"], "embedding": vec(4.0), "tokens": 1}],
        },
        headers=WORKER,
    )
    assert resp.status == 200
    answer = await request  # woken by back's NOTIFY
    assert (await answer.json())["data"][0]["embedding"] == [4.0]
    assert time.monotonic() - started < 10.0
