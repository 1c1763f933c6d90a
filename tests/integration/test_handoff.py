"""A claim waiting in this process is handed the next submit of its model directly: the
insert stores the inputs leased to it, as the claim statement would have, and the claim
returns without running it. What does not fit goes pending and is claimed as before."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

from embedq_server import queue as queue_module
from embedq_server.keys import LISTENER, POOL, QUEUE, SETTINGS
from embedq_server.queue import Queue
from embedq_server.records import Claim, WorkerInfo

WORKER = WorkerInfo(name="w-handoff", models=("m",))
GUARD = 10.0  # seconds: a broken hand-off fails here instead of hanging the suite
VECTOR = b"\0\0\x80?"  # one float32: 1.0


def setup(client: Any) -> tuple[Queue, asyncpg.Pool]:
    app = client.server.app
    return app[QUEUE], app[POOL]


def count_claim_statements(queue: Queue) -> list[int]:
    """Count the claim statements run (the only caller of _fetch_keeping_result)."""
    calls: list[int] = []
    inner = queue._fetch_keeping_result

    async def counted(query: str, *args: object) -> list[asyncpg.Record]:
        calls.append(1)
        return await inner(query, *args)

    queue._fetch_keeping_result = counted  # type: ignore[method-assign]
    return calls


async def waiting_claim(queue: Queue, max_items: int = 8, **kw: Any) -> asyncio.Task[Claim]:
    """A claim that found nothing and now waits (its offer is registered)."""
    claim = asyncio.create_task(queue.claim(WORKER, ["m"], max_items, wait=15, **kw))
    for _ in range(200):
        if len(queue._handoff):
            return claim
        await asyncio.sleep(0.01)
    raise AssertionError("the claim never started waiting")


async def item_states(pool: asyncpg.Pool, task_id: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT state FROM embedq_item WHERE task_id = $1 ORDER BY idx", task_id
    )
    return [r["state"] for r in rows]


async def store_result(queue: Queue, text: str) -> None:
    """Compute `text` (with the cache on, a later request of it is answered from it)."""
    await queue.submit("owner", "m", 0, [text])
    held = await queue.claim(WORKER, ["m"], 8, wait=0)
    await queue.complete(held.lease, [(held.items[0].id, VECTOR, 1)])


async def test_a_waiting_claim_gets_the_next_submit_without_a_claim_statement(app_client):
    client = await app_client(backstop_interval=20.0)
    queue, pool = setup(client)
    claims = count_claim_statements(queue)
    claim = await waiting_claim(queue)
    assert len(claims) == 1  # the first look found nothing
    task_id, attached, finished = await queue.submit("owner", "m", 0, ["x", "y"])
    assert (attached, finished) == (False, False)
    got = await asyncio.wait_for(claim, GUARD)
    assert len(claims) == 1  # handed over: no second claim statement
    assert [i.input for i in got.items] == ["x", "y"]
    assert {i.task_id for i in got.items} == {task_id}
    rows = await pool.fetch(
        "SELECT state, lease_token::text, attempts, worker, lease_expires > now() AS live,"
        " claimed_at IS NOT NULL AS claimed FROM embedq_item WHERE task_id = $1 ORDER BY idx",
        task_id,
    )
    assert [tuple(r) for r in rows] == [("processing", got.lease, 1, "w-handoff", True, True)] * 2
    assert len(queue._handoff) == 0
    # The lease works as any other: the results complete the task.
    done, _ = await queue.complete(got.lease, [(i.id, VECTOR, 1) for i in got.items])
    assert sorted(done) == sorted(i.id for i in got.items)
    task = await queue.read(task_id)
    assert task is not None and task.status == "completed"


async def test_a_request_larger_than_the_claim_goes_pending_and_is_claimed_as_before(
    app_client,
):
    client = await app_client(backstop_interval=20.0)
    queue, pool = setup(client)
    claims = count_claim_statements(queue)
    claim = await waiting_claim(queue, max_items=2)
    task_id, _, _ = await queue.submit("owner", "m", 0, ["a", "b", "c"])
    got = await asyncio.wait_for(claim, GUARD)
    assert len(claims) == 2  # woken by the announcement, it claimed with a statement
    assert [i.input for i in got.items] == ["a", "b"]
    assert await item_states(pool, task_id) == ["processing", "processing", "pending"]


async def test_other_models_and_cached_requests_do_not_fill_the_claim(app_client):
    client = await app_client(backstop_interval=20.0, cache="owner")
    queue, pool = setup(client)
    # Store a result for "seen", so a later request of it is answered from the cache.
    await store_result(queue, "seen")

    claim = await waiting_claim(queue)
    other, _, _ = await queue.submit("owner", "other-model", 0, ["nope"])
    # (Not ["seen"] alone: an identical request would attach to the first task.)
    _, attached, finished = await queue.submit("owner", "m", 0, ["seen", "seen"])
    assert (attached, finished) == (False, True)
    assert not claim.done()
    await queue.submit("owner", "m", 0, ["new"])
    got = await asyncio.wait_for(claim, GUARD)
    assert [i.input for i in got.items] == ["new"]
    assert await item_states(pool, other) == ["pending"]


async def test_one_claim_takes_one_model_and_dimensions(app_client):
    client = await app_client(backstop_interval=20.0)
    queue, pool = setup(client)
    claim = await waiting_claim(queue)
    results = await asyncio.gather(
        queue.submit("owner", "m", 0, ["native"]),
        queue.submit("owner", "m", 64, ["cut"]),
    )
    got = await asyncio.wait_for(claim, GUARD)
    assert [i.input for i in got.items] == ["native"]
    assert {i.dimensions for i in got.items} == {0}
    assert await item_states(pool, results[1][0]) == ["pending"]


async def test_a_claim_whose_worker_hung_up_hands_the_inputs_back(app_client):
    client = await app_client(backstop_interval=20.0)
    queue, pool = setup(client)
    hung_up = False
    claim = await waiting_claim(queue, gone=lambda: hung_up)
    hung_up = True
    task_id, _, _ = await queue.submit("owner", "m", 0, ["x"])
    got = await asyncio.wait_for(claim, GUARD)
    assert got.items == []
    rows = await pool.fetch("SELECT state, attempts FROM embedq_item WHERE task_id = $1", task_id)
    assert [tuple(r) for r in rows] == [("pending", 0)]  # handed back, the try not counted


async def test_a_cancelled_claim_releases_what_was_leased_to_it(app_client):
    client = await app_client(backstop_interval=20.0)
    queue, pool = setup(client)
    claim = await waiting_claim(queue)
    submit = asyncio.create_task(queue.submit("owner", "m", 0, ["x"]))
    # Cancel the claim the moment its offer is taken, while the insert is in flight.
    for _ in range(1000):
        if not len(queue._handoff):
            break
        await asyncio.sleep(0)
    claim.cancel()
    task_id, _, _ = await submit
    for _ in range(200):
        states = await item_states(pool, task_id)
        if states == ["pending"]:
            break
        await asyncio.sleep(0.02)
    assert states == ["pending"]


# -- handed ahead: before the insert, when probe_request allows -------------------------


async def insert_blocked(pool: asyncpg.Pool) -> tuple[asyncpg.Connection, Any]:
    """A transaction holding a lock that stops inserts into embedq_task (reads go on)."""
    conn = await pool.acquire()
    tx = conn.transaction()
    await tx.start()
    await conn.execute("LOCK TABLE embedq_task IN SHARE MODE")
    return conn, tx


async def test_a_fresh_request_is_handed_before_its_insert_and_stored_as_handed(app_client):
    client = await app_client(backstop_interval=20.0)
    queue, pool = setup(client)
    claim = await waiting_claim(queue)
    locker, tx = await insert_blocked(pool)
    try:
        submit = asyncio.create_task(queue.submit("owner", "m", 0, ["x", "y"]))
        got = await asyncio.wait_for(claim, GUARD)  # while the insert waits for the lock
        assert [i.input for i in got.items] == ["x", "y"]
        assert not submit.done()
        # Results posted now wait for the insert instead of finding nothing to complete.
        completing = asyncio.create_task(
            queue.complete(got.lease, [(i.id, VECTOR, 1) for i in got.items])
        )
        await asyncio.sleep(0.2)
        assert not completing.done()
    finally:
        await tx.rollback()
        await pool.release(locker)
    task_id, attached, finished = await asyncio.wait_for(submit, GUARD)
    assert (attached, finished) == (False, False)
    done, _ = await asyncio.wait_for(completing, GUARD)
    assert sorted(done) == sorted(i.id for i in got.items)  # stored under the ids handed
    assert {i.task_id for i in got.items} == {task_id}
    task = await queue.read(task_id)
    assert task is not None and task.status == "completed"
    assert queue._handoff._inserting == {}


async def test_requests_the_insert_might_not_store_as_handed_wait_for_it(app_client):
    """A cached input or an identical earlier request: the insert decides, as before."""
    client = await app_client(backstop_interval=20.0, cache="owner")
    queue, pool = setup(client)
    await store_result(queue, "seen")
    earlier, _, _ = await queue.submit("owner", "m", 0, ["again"])
    assert len((await queue.claim(WORKER, ["m"], 8, wait=0)).items) == 1  # computing

    for texts in (["seen", "fresh"], ["again"]):
        claim = await waiting_claim(queue)
        locker, tx = await insert_blocked(pool)
        try:
            submit = asyncio.create_task(queue.submit("owner", "m", 0, texts))
            await asyncio.sleep(0.3)
            assert not claim.done()  # not handed ahead
        finally:
            await tx.rollback()
            await pool.release(locker)
        task_id, attached, _ = await asyncio.wait_for(submit, GUARD)
        if texts == ["again"]:
            assert attached and task_id == earlier  # attached to the earlier request
            await asyncio.sleep(0.1)
            assert not claim.done()  # and nothing was given to the claim
            claim.cancel()
            continue
        got = await asyncio.wait_for(claim, GUARD)
        assert [i.input for i in got.items] == ["fresh"]  # "seen" came from the cache
        await queue.complete(got.lease, [(i.id, VECTOR, 1) for i in got.items])


async def test_the_insert_goes_once_the_claim_handed_ahead_has_answered(app_client):
    """Sent first, the insert delayed the claim's answer and took the CPU from the worker
    starting its backend call (bench/HISTORY.md)."""
    client = await app_client(backstop_interval=20.0)
    queue, _ = setup(client)
    claim = await waiting_claim(queue)
    answered_before_insert: list[bool] = []
    insert = queue._insert_group

    async def watched(*args: Any) -> Any:
        answered_before_insert.append(claim.done())
        return await insert(*args)

    queue._insert_group = watched  # type: ignore[method-assign]
    await queue.submit("owner", "m", 0, ["z"])
    assert (await asyncio.wait_for(claim, GUARD)).items
    assert answered_before_insert == [True]


async def test_results_that_reach_another_process_before_the_insert_are_stored(app_client):
    """The worker may post to another server process (one address, several processes)
    before the insert of inputs handed to it ahead commits: they are tried again."""
    client = await app_client(backstop_interval=20.0)
    queue, pool = setup(client)
    app = client.server.app
    other = Queue(pool, app[LISTENER], app[SETTINGS])  # another process: knows no lease
    claim = await waiting_claim(queue)
    locker, tx = await insert_blocked(pool)
    try:
        submit = asyncio.create_task(queue.submit("owner", "m", 0, ["p", "q"]))
        got = await asyncio.wait_for(claim, GUARD)
        posting = asyncio.create_task(
            other.complete(got.lease, [(i.id, VECTOR, 1) for i in got.items])
        )
        await asyncio.sleep(0.2)
        assert not posting.done()  # refused while unstored, and trying again
    finally:
        await tx.rollback()
        await pool.release(locker)
    task_id, _, _ = await asyncio.wait_for(submit, GUARD)
    done, _ = await asyncio.wait_for(posting, GUARD)
    assert sorted(done) == sorted(i.id for i in got.items)
    task = await queue.read(task_id)
    assert task is not None and task.status == "completed"


async def test_results_for_inputs_never_stored_are_refused_in_the_end(app_client, monkeypatch):
    client = await app_client(backstop_interval=20.0)
    queue, pool = setup(client)
    monkeypatch.setattr("embedq_server.queue.UNSTORED_WAIT", 0.2)
    tries: list[int] = []
    once = queue._complete_once

    async def counted(*args: Any) -> Any:
        tries.append(1)
        return await once(*args)

    queue._complete_once = counted  # type: ignore[method-assign]
    # An id the sequence gave out whose input is not stored (as if its insert failed):
    # tried again until UNSTORED_WAIT, then refused.
    await queue.submit("owner", "m", 0, ["to be gone"])
    unstored = await pool.fetchval("SELECT last_value FROM embedq_item_id_seq")
    await pool.execute("DELETE FROM embedq_item WHERE id = $1", unstored)
    lease = str(uuid.uuid4())
    done, failed = await asyncio.wait_for(queue.complete(lease, [(unstored, b"1234", 1)]), GUARD)
    assert (done, failed) == ([], []) and len(tries) > 1
    # An id the sequence never gave out: refused at once.
    tries.clear()
    never = unstored + 10**6
    done, failed = await asyncio.wait_for(queue.complete(lease, [(never, b"1234", 1)]), GUARD)
    assert (done, failed) == ([], []) and tries == [1]


async def test_requests_arriving_together_are_handed_after_their_insert(app_client):
    """Several requests matched to one claim in one group (a busy server): no probe, one
    statement per group as before; the claim gets them all once they are stored."""
    client = await app_client(backstop_interval=20.0)
    queue, pool = setup(client)
    claim = await waiting_claim(queue)
    locker, tx = await insert_blocked(pool)
    try:
        submits = [asyncio.create_task(queue.submit("owner", "m", 0, [t])) for t in ("a", "b")]
        await asyncio.sleep(0.3)
        assert not claim.done()
    finally:
        await tx.rollback()
        await pool.release(locker)
    await asyncio.wait_for(asyncio.gather(*submits), GUARD)
    got = await asyncio.wait_for(claim, GUARD)
    assert sorted(i.input for i in got.items) == ["a", "b"]


async def test_results_answered_ahead_are_stored_after_the_next_insert(app_client, monkeypatch):
    """A lease whose every task was answered from the posted vectors is stored once the
    next request's insert has run (off that request's path), not at once."""
    monkeypatch.setattr(queue_module, "STORE_BEHIND_WAIT", 60.0)  # only the insert ends it
    client = await app_client(backstop_interval=20.0)
    queue, pool = setup(client)
    claim = await waiting_claim(queue)
    waiting = asyncio.create_task(queue.submit_and_wait("owner", "m", 0, ["x"], timeout=15))
    got = await asyncio.wait_for(claim, GUARD)
    storing = asyncio.create_task(queue.complete(got.lease, [(got.items[0].id, VECTOR, 1)]))
    answered = await asyncio.wait_for(waiting, GUARD)
    assert answered is not None and answered.status == "completed"
    await asyncio.sleep(0.2)  # the statement would have committed long since
    assert not storing.done()
    assert await item_states(pool, answered.id) == ["processing"]
    await queue.submit("owner", "m", 0, ["the next request"])
    done, _ = await asyncio.wait_for(storing, GUARD)
    assert done == [got.items[0].id]
    assert await item_states(pool, answered.id) == ["completed"]


async def test_results_answered_ahead_are_stored_when_no_request_follows(app_client, monkeypatch):
    monkeypatch.setattr(queue_module, "STORE_BEHIND_WAIT", 0.2)
    client = await app_client(backstop_interval=20.0)
    queue, pool = setup(client)
    claim = await waiting_claim(queue)
    task_id, _, _ = await queue.submit("owner", "m", 0, ["alone"])
    got = await asyncio.wait_for(claim, GUARD)
    done, _ = await asyncio.wait_for(
        queue.complete(got.lease, [(got.items[0].id, VECTOR, 1)]), GUARD
    )
    assert done == [got.items[0].id]
    assert await item_states(pool, task_id) == ["completed"]


async def test_results_someone_still_waits_for_are_stored_at_once(app_client, monkeypatch):
    """Only when every task of the lease has its answer may the statement wait: here the
    claim statement took the task, so its waiter reads it back after the statement."""
    monkeypatch.setattr(queue_module, "STORE_BEHIND_WAIT", 60.0)
    client = await app_client(backstop_interval=20.0)
    queue, pool = setup(client)
    task_id, _, _ = await queue.submit("owner", "m", 0, ["claimed by the statement"])
    got = await queue.claim(WORKER, ["m"], 8, wait=0)
    done, _ = await asyncio.wait_for(
        queue.complete(got.lease, [(got.items[0].id, VECTOR, 1)]), GUARD
    )
    assert done == [got.items[0].id]
    assert await item_states(pool, task_id) == ["completed"]
