"""A completion that finishes a task answers its waiters in this process with the vectors
it holds (this batch's, and those of earlier batches of a split task), instead of reading
them back: the answer must be exactly what a read of the stored task gives, and a task
whose vectors are not all in hand (cached inputs, another process's batch) still reads.
A task handed whole to a waiting claim is answered as the lease's results arrive, before
the completion statement stores them."""

from __future__ import annotations

import asyncio
import base64
import struct
from dataclasses import replace
from typing import Any

from embedq_server import openai_api
from embedq_server.inhand import VectorsInHand
from embedq_server.keys import POOL, QUEUE
from embedq_server.records import Claim, Failure, WorkerInfo
from tests.helpers import CLIENT, WORKER, claim, wait_until


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
    # Every field, the vectors in input order included; the answer came before the
    # completion statement set the stored finish time.
    assert answered.finished_at is not None
    assert replace(answered, finished_at=stored.finished_at) == stored
    assert [struct.unpack("<2f", r.vector)[0] for r in answered.results or ()] == [1.0, 2.0, 3.0]
    assert [r.tokens for r in answered.results or ()] == [3, 3, 3]


async def split_task(client: Any, forget_between: bool) -> int:
    """A four-text task computed in two batches, the later half posted first; with
    `forget_between`, as if another server process had stored the first batch. Returns
    how many reads of tasks its answer took."""
    queue = client.server.app[QUEUE]
    reads = count_reads(queue)
    texts = ["one", "two", "three", "four"]
    value = {t: float(n) for n, t in enumerate(texts)}
    waiting = asyncio.create_task(queue.submit_and_wait("owner-1", "m", 0, texts, timeout=15))
    first = await claim(client, max_items=2, wait=5)
    second = await claim(client, max_items=2, wait=5, worker="w2")
    await post_results(client, second, value)
    assert not waiting.done()
    if forget_between:
        queue._in_hand = VectorsInHand(keep_seconds=60)
    await post_results(client, first, value)
    answered = await waiting
    answer_reads = len(reads)
    assert answered is not None and answered.status == "completed"
    assert [struct.unpack("<2f", r.vector)[0] for r in answered.results or ()] == [
        0.0,
        1.0,
        2.0,
        3.0,
    ]
    stored = await queue.read(answered.id)
    assert replace(answered, finished_at=stored.finished_at) == stored
    return answer_reads


async def test_a_task_split_over_batches_is_answered_from_both_batches(app_client):
    client = await app_client(backstop_interval=20.0)
    assert await split_task(client, forget_between=False) == 0


async def test_a_split_task_whose_first_batch_is_not_in_hand_is_read(app_client):
    client = await app_client(backstop_interval=20.0)
    assert await split_task(client, forget_between=True) == 1


async def test_a_task_finished_with_cached_inputs_is_read(app_client):
    client = await app_client(backstop_interval=20.0)
    queue = client.server.app[QUEUE]
    first = asyncio.create_task(queue.submit_and_wait("owner-1", "m", 0, ["kept"], timeout=15))
    await post_results(client, await claim(client, wait=5), {"kept": 1.0})
    await first
    reads = count_reads(queue)
    waiting = asyncio.create_task(
        queue.submit_and_wait("owner-1", "m", 0, ["kept", "new"], timeout=15)
    )
    batch = await claim(client, wait=5)
    assert [i["input"] for i in batch["items"]] == ["new"]  # "kept" came from the cache
    await post_results(client, batch, {"new": 2.0})
    answered = await waiting
    assert reads  # the batch finished the task but held only one of its vectors
    assert [struct.unpack("<2f", r.vector)[0] for r in answered.results or ()] == [1.0, 2.0]


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


# -- tasks handed whole to a waiting claim: answered before the completion statement -------

HANDED = WorkerInfo(name="w-handed", models=("m",))
GUARD = 10.0  # seconds: a broken path fails here instead of hanging the suite


async def handed_request(queue: Any, texts: list[str]) -> tuple[asyncio.Task[Any], Claim]:
    """A claim waiting in the queue, then a request it is handed whole."""
    claim_task = asyncio.create_task(queue.claim(HANDED, ["m"], 8, wait=15))
    await wait_until(lambda: _true(bool(len(queue._handoff))), timeout=GUARD)
    waiting = asyncio.create_task(queue.submit_and_wait("owner-1", "m", 0, texts, timeout=15))
    claimed: Claim = await asyncio.wait_for(claim_task, GUARD)
    assert sorted(i.input for i in claimed.items) == sorted(texts)
    # Handed ahead of its insert: the task is known whole to the lease once stored.
    await wait_until(lambda: _true(claimed.lease in queue._handed._by_lease), timeout=GUARD)
    assert queue._handed._by_lease.keys() == {claimed.lease}
    return waiting, claimed


async def _true(value: bool) -> bool:
    return value


async def test_a_task_handed_whole_is_answered_before_its_results_are_stored(app_client):
    client = await app_client(backstop_interval=20.0)
    queue, pool = client.server.app[QUEUE], client.server.app[POOL]
    waiting, claimed = await handed_request(queue, ["alpha", "beta"])
    value = {"alpha": 1.0, "beta": 2.0}
    results = [(i.id, struct.pack("<2f", value[i.input], -1.0), 4) for i in claimed.items]
    async with pool.acquire() as locker, locker.transaction():
        # Hold the inputs' rows: the completion statement blocks on them.
        await locker.execute(
            "SELECT 1 FROM embedq_item WHERE id = ANY($1) FOR UPDATE",
            [i.id for i in claimed.items],
        )
        completing = asyncio.create_task(queue.complete(claimed.lease, results))
        answered = await asyncio.wait_for(waiting, GUARD)
        assert not completing.done()  # the answer did not wait for the statement
        assert answered.status == "completed"
        assert [struct.unpack("<2f", r.vector)[0] for r in answered.results] == [1.0, 2.0]
        assert [r.tokens for r in answered.results] == [4, 4]
    done, _ = await asyncio.wait_for(completing, GUARD)
    assert sorted(done) == sorted(i.id for i in claimed.items)  # and it was stored
    stored = await queue.read(answered.id)
    assert replace(answered, finished_at=stored.finished_at) == stored


async def test_the_completion_statement_waits_until_the_early_answer_is_written(
    app_client, monkeypatch
):
    """Sent at once, the statement's work in PostgreSQL competed with the answer for the
    CPU (bench/HISTORY.md): it goes once the waiting request has written its answer."""
    client = await app_client(backstop_interval=20.0)
    queue, pool = client.server.app[QUEUE], client.server.app[POOL]
    order: list[str] = []
    answer = openai_api.answer

    async def watched_answer(*args: Any, **kwargs: Any) -> Any:
        response = await answer(*args, **kwargs)
        order.append("answer")
        return response

    acquire = type(pool).acquire

    def watched_acquire(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self is pool:
            order.append("statement")
        return acquire(self, *args, **kwargs)

    monkeypatch.setattr(openai_api, "answer", watched_answer)
    claim_task = asyncio.create_task(queue.claim(HANDED, ["m"], 8, wait=15))
    await wait_until(lambda: _true(bool(len(queue._handoff))), timeout=GUARD)
    request = asyncio.create_task(
        client.post("/v1/embeddings", json={"model": "m", "input": "delta"}, headers=CLIENT)
    )
    claimed: Claim = await asyncio.wait_for(claim_task, GUARD)
    monkeypatch.setattr(type(pool), "acquire", watched_acquire)
    results = [(claimed.items[0].id, struct.pack("<2f", 1.0, 0.0), 1)]
    done, _ = await asyncio.wait_for(queue.complete(claimed.lease, results), GUARD)
    assert done == [claimed.items[0].id]
    assert (await asyncio.wait_for(request, GUARD)).status == 200
    assert order == ["answer", "statement"]


async def test_a_task_the_claim_statement_took_is_answered_after_it_is_stored(app_client):
    """Only handed tasks are answered early (see embedq_server/handed.py)."""
    client = await app_client(backstop_interval=20.0)
    queue = client.server.app[QUEUE]
    waiting = asyncio.create_task(queue.submit_and_wait("owner-1", "m", 0, ["a"], 15))
    await wait_until(lambda: _true(queue._pending_count == 1), timeout=GUARD)
    claimed = await queue.claim(HANDED, ["m"], 8, wait=5)
    assert len(claimed.items) == 1 and len(queue._handed) == 0
    done, _ = await queue.complete(claimed.lease, [(claimed.items[0].id, b"\0\0\x80?", 1)])
    assert done == [claimed.items[0].id]
    answered = await asyncio.wait_for(waiting, GUARD)
    assert answered.status == "completed"
    assert answered.finished_at == (await queue.read(answered.id)).finished_at  # the stored one


async def test_a_handed_task_with_a_failed_input_is_answered_from_the_database(app_client):
    client = await app_client(backstop_interval=20.0)
    queue = client.server.app[QUEUE]
    waiting, claimed = await handed_request(queue, ["fine", "broken"])
    fine = next(i for i in claimed.items if i.input == "fine")
    broken = next(i for i in claimed.items if i.input == "broken")
    failure = Failure(broken.id, "too long", "input_rejected", retry=False)
    await queue.complete(claimed.lease, [(fine.id, struct.pack("<2f", 1.0, 0.0), 1)], [failure])
    answered = await asyncio.wait_for(waiting, GUARD)
    assert answered.status == "failed"
    assert answered.error_code == "input_rejected"


async def test_results_posted_after_the_lease_was_handed_back_answer_nobody(app_client):
    client = await app_client(backstop_interval=20.0)
    queue = client.server.app[QUEUE]
    waiting, claimed = await handed_request(queue, ["gamma"])
    released = await queue.release(claimed.lease, [i.id for i in claimed.items])
    assert released == [claimed.items[0].id]
    done, _ = await queue.complete(claimed.lease, [(claimed.items[0].id, b"\0\0\x80?", 1)])
    assert done == []  # refused: the lease no longer holds it
    await asyncio.sleep(0.2)
    assert not waiting.done()  # still waiting for a worker to compute it
    waiting.cancel()
