"""A completion that finishes a whole task answers its waiters in this process with the
vectors just posted, instead of reading them back: the answer must be exactly what a read
of the stored task gives, and tasks the batch did not finish whole still read."""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any

from embedq_server.keys import QUEUE
from tests.helpers import CLIENT, WORKER, claim


def vec(*values: float) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


async def post_results(client: Any, batch: dict[str, Any], value: dict[str, float]) -> None:
    resp = await client.post(
        "/worker/complete",
        json={
            "worker": "w1",
            "lease": batch["lease"],
            "results": [
                {"id": i["id"], "embedding": vec(value[i["input"]], -1.0), "tokens": 3}
                for i in reversed(batch["items"])  # posted out of order on purpose
            ],
        },
        headers=WORKER,
    )
    assert resp.status == 200, await resp.text()


def count_reads(queue: Any) -> list[int]:
    """Count the statements that read tasks back (the Grouped run behind Queue.read)."""
    calls: list[int] = []
    inner = queue._reads._run

    async def counted(task_ids: list[str]) -> Any:
        calls.append(len(task_ids))
        return await inner(task_ids)

    queue._reads._run = counted
    return calls


async def test_a_task_finished_whole_is_answered_without_a_read(app_client):
    client = await app_client(backstop_interval=20.0)
    queue = client.server.app[QUEUE]
    reads = count_reads(queue)
    texts = ["alpha", "beta", "gamma"]
    waiting = asyncio.create_task(queue.submit_and_wait("owner-1", "m", 0, texts, timeout=15))
    batch = await claim(client, wait=5)
    assert sorted(i["input"] for i in batch["items"]) == sorted(texts)
    await post_results(client, batch, {"alpha": 1.0, "beta": 2.0, "gamma": 3.0})
    answered = await waiting
    assert reads == []  # answered from the posted vectors
    assert answered is not None and answered.status == "completed"
    stored = await queue.read(answered.id)
    assert answered == stored  # every field, the vectors in input order included
    assert [struct.unpack("<2f", r.vector)[0] for r in answered.results or ()] == [1.0, 2.0, 3.0]
    assert [r.tokens for r in answered.results or ()] == [3, 3, 3]


async def test_a_task_split_over_batches_reads_what_the_first_batch_left(app_client):
    client = await app_client(backstop_interval=20.0)
    queue = client.server.app[QUEUE]
    reads = count_reads(queue)
    texts = ["one", "two", "three", "four"]
    value = {t: float(n) for n, t in enumerate(texts)}
    waiting = asyncio.create_task(queue.submit_and_wait("owner-1", "m", 0, texts, timeout=15))
    first = await claim(client, max_items=2, wait=5)
    second = await claim(client, max_items=2, wait=5, worker="w2")
    await post_results(client, second, value)
    await post_results(client, first, value)
    answered = await waiting
    assert reads  # the last batch held only half of the task: its answer was read
    assert answered is not None and answered.status == "completed"
    assert [struct.unpack("<2f", r.vector)[0] for r in answered.results or ()] == [
        0.0,
        1.0,
        2.0,
        3.0,
    ]


async def test_the_http_answer_from_hand_matches_the_stored_vectors(app_client):
    client = await app_client()
    request = asyncio.create_task(
        client.post("/v1/embeddings", json={"model": "m", "input": ["x", "y"]}, headers=CLIENT)
    )
    batch = await claim(client, wait=5)
    await post_results(client, batch, {"x": 0.5, "y": 0.25})
    body = await (await request).json()
    assert [d["embedding"] for d in body["data"]] == [[0.5, -1.0], [0.25, -1.0]]
    assert body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    task_id = (await request).headers["X-Embedq-Task"]
    again = await client.get(f"/tasks/{task_id}/result", headers=CLIENT)
    assert [d["embedding"] for d in (await again.json())["data"]] == [[0.5, -1.0], [0.25, -1.0]]
