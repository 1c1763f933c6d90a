"""bench.nodb's write-behind yardsticks answer from memory, then store what embedq's queue
stores: the task, its inputs leased and then completed with their vectors, and the cache."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench.nodb import BehindQueue, ProbedBehindQueue
from embedq_server.keys import LISTENER, POOL, SETTINGS
from embedq_server.records import WorkerInfo
from embedq_server.vectors import to_floats

WORKER = WorkerInfo(name="w-behind", models=("m",))
VECTOR = b"\0\0\x80?"  # one float32: 1.0


@pytest.mark.parametrize("kind", [BehindQueue, ProbedBehindQueue])
async def test_the_write_behind_yardstick_stores_what_it_answered(
    app_client: Any, kind: type[BehindQueue]
) -> None:
    client = await app_client()
    app = client.server.app
    queue = kind(app[POOL], app[LISTENER], app[SETTINGS])
    waiting = asyncio.create_task(queue.submit_and_wait("owner", "m", 0, ["a", "b"], 10))
    claim = await queue.claim(WORKER, ["m"], 8, wait=5)
    assert [item.input for item in claim.items] == ["a", "b"]
    done, failed = await queue.complete(claim.lease, [(i.id, VECTOR, 1) for i in claim.items])
    assert (len(done), failed) == (2, [])
    task = await asyncio.wait_for(waiting, 5)
    assert task is not None and task.status == "completed"
    await asyncio.wait_for(queue.written(), 5)

    rows = await app[POOL].fetch(
        "SELECT state, vector, input FROM embedq_item WHERE task_id = $1 ORDER BY idx", task.id
    )
    assert [(r["state"], r["input"]) for r in rows] == [("completed", "a"), ("completed", "b")]
    assert all(to_floats(r["vector"]) == [1.0] for r in rows)
    finished = await app[POOL].fetchrow(
        "SELECT remaining, finished_at FROM embedq_task WHERE id = $1", task.id
    )
    assert finished["remaining"] == 0 and finished["finished_at"] is not None
    assert await app[POOL].fetchval("SELECT count(*) FROM embedq_cache") == 2
