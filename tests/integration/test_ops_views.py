"""The ops views (migration 0003) over a queue built through the real HTTP API.

`seed_queue` is shared with the other ops tests (docs, CLI, metrics, status page): it makes
a small queue in every state, the way clients and workers would.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from tests.helpers import CLIENT, WORKER, claim


@dataclass(frozen=True)
class Seeded:
    pending: str  # m-a: 3 inputs waiting
    processing: str  # m-a: 1 input held by worker w1
    half_failed: str  # m-b: 1 input completed, 1 failed ("boom-b")
    failed: str  # m-b: 2 inputs failed ("boom-c0", "boom-c1")


def vec(*values: float) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


async def submit(client: TestClient, model: str, inputs: list[str]) -> str:
    resp = await client.post(
        "/v1/embeddings",
        json={"model": model, "input": inputs, "wait_seconds": 0},
        headers=CLIENT,
    )
    assert resp.status == 202, await resp.text()
    task_id: str = (await resp.json())["id"]
    return task_id


async def post_results(
    client: TestClient,
    worker: str,
    lease: str,
    done: list[int],
    failed: list[tuple[int, str]],
) -> None:
    resp = await client.post(
        "/worker/complete",
        json={
            "worker": worker,
            "lease": lease,
            "results": [{"id": i, "embedding": vec(1.0, 2.0), "tokens": 1} for i in done],
            "failures": [
                {"id": i, "error": error, "code": "backend_error", "retry": False}
                for i, error in failed
            ],
        },
        headers=WORKER,
    )
    assert resp.status == 200, await resp.text()


async def seed_queue(client: TestClient, a: str = "m-a", b: str = "m-b") -> Seeded:
    """A queue in every state, through the API: pending, processing, completed, failed.
    Model `a` has the pending and processing inputs, model `b` the completed and failed."""
    processing = await submit(client, a, ["held"])
    batch = await claim(client, [a], max_items=1, worker="w1")
    assert len(batch["items"]) == 1
    pending = await submit(client, a, ["a0", "a1", "a2"])

    half_failed = await submit(client, b, ["b0", "b1"])
    batch = await claim(client, [b], worker="w2")
    first, second = (item["id"] for item in batch["items"])
    await post_results(client, "w2", batch["lease"], [first], [(second, "boom-b")])

    failed = await submit(client, b, ["c0", "c1"])
    batch = await claim(client, [b], worker="w2")
    ids = [item["id"] for item in batch["items"]]
    await post_results(client, "w2", batch["lease"], [], [(ids[0], "boom-c0"), (ids[1], "boom-c1")])
    return Seeded(pending, processing, half_failed, failed)


async def fetch(db_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def test_queue_view_counts_per_model_and_state(app_client, db_url):
    await seed_queue(await app_client())
    rows = await fetch(db_url, "SELECT * FROM embedq_queue")
    by_key = {(r["model"], r["state"]): r for r in rows}
    assert {k: r["items"] for k, r in by_key.items()} == {
        ("m-a", "pending"): 3,
        ("m-a", "processing"): 1,
        ("m-b", "completed"): 1,
        ("m-b", "failed"): 3,
    }
    assert by_key["m-b", "failed"]["tasks"] == 2
    assert by_key["m-a", "pending"]["oldest_pending_seconds"] >= 0
    assert by_key["m-a", "processing"]["oldest_pending_seconds"] is None


async def test_oldest_pending_age_reads_the_oldest_input(app_client, db_url):
    seeded = await seed_queue(await app_client())
    await fetch(
        db_url,
        "UPDATE embedq_item SET created_at = now() - interval '5 minutes' WHERE task_id = $1",
        seeded.pending,
    )
    (row,) = await fetch(
        db_url, "SELECT oldest_pending_seconds FROM embedq_queue WHERE state = 'pending'"
    )
    assert 299 < row["oldest_pending_seconds"] < 330


async def test_workers_view_shows_liveness_and_items_in_hand(app_client, db_url):
    await seed_queue(await app_client())
    await fetch(
        db_url, "UPDATE embedq_worker SET last_seen = now() - interval '2 minutes' WHERE name='w2'"
    )
    rows = {r["name"]: r for r in await fetch(db_url, "SELECT * FROM embedq_workers")}
    assert rows["w1"]["alive"] is True and rows["w1"]["items_in_hand"] == 1
    assert rows["w1"]["models"] == ["m-a"] and rows["w1"]["seconds_since_seen"] < 30
    assert rows["w2"]["alive"] is False and rows["w2"]["items_in_hand"] == 0
    assert rows["w2"]["seconds_since_seen"] >= 120
    assert [r["name"] for r in await fetch(db_url, "SELECT name FROM embedq_workers")] == [
        "w1",
        "w2",
    ]


async def test_failures_view_lists_failed_inputs_newest_first(app_client, db_url):
    seeded = await seed_queue(await app_client())
    await fetch(
        db_url,
        "UPDATE embedq_item SET completed_at = now() - interval '1 hour' WHERE error = 'boom-b'",
    )
    rows = await fetch(db_url, "SELECT * FROM embedq_failures")
    assert [r["error"] for r in rows][-1] == "boom-b"
    assert sorted(r["error"] for r in rows) == ["boom-b", "boom-c0", "boom-c1"]
    assert {str(r["task_id"]) for r in rows} == {seeded.half_failed, seeded.failed}
    assert all(r["model"] == "m-b" and r["worker"] == "w2" and r["attempts"] == 1 for r in rows)
    assert all(r["error_code"] == "backend_error" for r in rows)


async def test_throughput_view_is_zero_filled_per_minute_for_an_hour(app_client, db_url):
    await seed_queue(await app_client())
    await fetch(
        db_url,
        "INSERT INTO embedq_task (id, owner, fingerprint, model, n_inputs, remaining) "
        "VALUES (gen_random_uuid(), 'o', '\\x00', 'm-c', 2, 0)",
    )
    await fetch(
        db_url,
        "INSERT INTO embedq_item (task_id, idx, model, input, state, completed_at) "
        "SELECT id, g, 'm-c', 'x', 'completed', now() - interval '10 minutes' - g * interval "
        "'50 minutes' FROM embedq_task, generate_series(0, 1) g WHERE model = 'm-c'",
    )
    rows = await fetch(db_url, "SELECT * FROM embedq_throughput")
    by_model: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    assert set(by_model) == {"m-b", "m-c"}  # m-a completed nothing in the hour
    assert len(by_model["m-b"]) == 60 and sum(r["completed"] for r in by_model["m-b"]) == 1
    # this minute (or the one before, if a minute turned during the test)
    assert sum(r["completed"] for r in by_model["m-b"][-2:]) == 1
    assert sum(r["completed"] for r in by_model["m-c"]) == 1  # the other is an hour old
    minutes = [r["minute"] for r in by_model["m-c"]]
    assert minutes == sorted(minutes) and (minutes[-1] - minutes[0]).total_seconds() == 59 * 60


async def test_ops_migrations_are_idempotent(db_url):
    """yoyo can re-run a migration whose bookkeeping was lost in a crash."""
    from embedq_server.database import migrations_dir

    conn = await asyncpg.connect(db_url)
    try:
        for name in ("0003_ops_views.sql", "0004_ops_functions.sql"):
            await conn.execute((migrations_dir() / name).read_text())
            await conn.execute((migrations_dir() / name).read_text())
        assert await conn.fetchval("SELECT count(*) FROM embedq_queue") == 0
    finally:
        await conn.close()
