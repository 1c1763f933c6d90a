"""Queue.submit under load: requests that arrive together go into PostgreSQL in one shared
statement (group commit), and each still gets exactly its own task, inputs, attachment and
cache hits.

Requests made in the same loop turn share a statement; tasks inserted by one statement
share their created_at (the transaction's now()), which is how these tests see that a group
was really formed, without looking inside the queue.
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from typing import Any

import asyncpg
import pytest

from embedq_server.keys import POOL, QUEUE
from embedq_server.queue import Queue
from embedq_server.records import WorkerInfo, fingerprint

ALICE = "alice"
BOB = "bob"


def setup(client: Any) -> tuple[Queue, asyncpg.Pool]:
    app = client.server.app
    return app[QUEUE], app[POOL]


async def tasks_by_id(pool: asyncpg.Pool) -> dict[str, asyncpg.Record]:
    return {str(r["id"]): r for r in await pool.fetch("SELECT * FROM embedq_task")}


async def items_of(pool: asyncpg.Pool, task_id: str) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT * FROM embedq_item WHERE task_id = $1 ORDER BY idx", uuid.UUID(task_id)
        )
    )


def vector(x: float) -> bytes:
    return struct.pack("<f", x)


def request(i: int) -> tuple[str, str, int, list[str]]:
    """The i-th of a varied load: two owners, two models, dimensions or none, one input or
    several, and texts repeated across owners."""
    owner = ALICE if i % 2 else BOB
    model = "m1" if i % 3 else "m2"
    dimensions = 0 if i % 5 else 64
    if i % 4:
        inputs = [f"text {i}"]
    else:
        inputs = [f"request {i} input {j}" for j in range(2 + i % 7)]
    if i % 10 == 9:  # the same text as the previous request, which is the other owner's
        inputs = [f"text {i - 1}"]
    return owner, model, dimensions, inputs


async def test_many_concurrent_submits_each_land_whole(app_client):
    client = await app_client()
    queue, pool = setup(client)
    wanted = [request(i) for i in range(50)]
    calls = []
    for wave in range(5):  # some together, some while a group is in flight
        for i in range(wave * 10, wave * 10 + 10):
            calls.append(asyncio.create_task(queue.submit(*wanted[i])))
        await asyncio.sleep(0)
    answers = await asyncio.gather(*calls)

    assert all(not attached and not finished for _, attached, finished in answers)
    ids = [task_id for task_id, _, _ in answers]
    assert len(set(ids)) == 50
    rows = await tasks_by_id(pool)
    assert sorted(rows) == sorted(ids)
    for task_id, (owner, model, dimensions, inputs) in zip(ids, wanted, strict=True):
        task = rows[task_id]
        assert (task["owner"], task["model"], task["dimensions"]) == (owner, model, dimensions)
        assert task["n_inputs"] == task["remaining"] == len(inputs)
        assert task["failed"] == 0 and task["finished_at"] is None
        assert bytes(task["fingerprint"]) == fingerprint(owner, model, dimensions, inputs)
        items = await items_of(pool, task_id)
        assert [(r["idx"], r["input"]) for r in items] == list(enumerate(inputs))
        assert {(r["model"], r["dimensions"], r["state"]) for r in items} == {
            (model, dimensions, "pending")
        }
    assert await pool.fetchval("SELECT count(*) FROM embedq_item") == sum(len(w[3]) for w in wanted)
    # Some requests really shared a statement.
    assert len({r["created_at"] for r in rows.values()}) < 50


async def test_a_repeat_attaches_to_the_owners_task_but_not_across_owners(app_client):
    client = await app_client()
    queue, pool = setup(client)
    first = await asyncio.gather(
        queue.submit(ALICE, "m", 0, ["x", "y"]),
        queue.submit(BOB, "m", 0, ["z"]),
    )
    (alice_id, _, _), (bob_id, _, _) = first

    # In one group: Alice's repeat, Bob's copy of Alice's request, a new one, Bob's repeat.
    again = await asyncio.gather(
        queue.submit(ALICE, "m", 0, ["x", "y"]),
        queue.submit(BOB, "m", 0, ["x", "y"]),
        queue.submit(ALICE, "m", 0, ["y", "x"]),  # other order: another request
        queue.submit(BOB, "m", 0, ["z"]),
    )
    assert again[0] == (alice_id, True, False)
    assert again[1][1:] == (False, False) and again[1][0] not in (alice_id, bob_id)
    assert again[2][1:] == (False, False) and again[2][0] != alice_id
    assert again[3] == (bob_id, True, False)

    rows = await tasks_by_id(pool)
    assert sorted(rows) == sorted([alice_id, bob_id, again[1][0], again[2][0]])
    assert rows[again[1][0]]["created_at"] == rows[again[2][0]]["created_at"]  # one group
    assert [r["input"] for r in await items_of(pool, alice_id)] == ["x", "y"]
    assert [r["input"] for r in await items_of(pool, again[1][0])] == ["x", "y"]
    assert [r["input"] for r in await items_of(pool, again[2][0])] == ["y", "x"]
    assert await pool.fetchval("SELECT count(*) FROM embedq_item") == 7


async def test_a_group_mixing_a_cached_request_and_new_ones(app_client):
    client = await app_client()  # the cache is on, per owner
    queue, pool = setup(client)
    await queue.submit(ALICE, "m", 0, ["a", "bb"])
    claim = await queue.claim(WorkerInfo("w"), ["m"], 32, 0)
    done, _ = await queue.complete(
        claim.lease, [(i.id, vector(len(i.input)), 7) for i in claim.items]
    )
    assert len(done) == 2

    answers = await asyncio.gather(
        queue.submit(ALICE, "m", 0, ["bb", "a"]),  # all stored: finished at once
        queue.submit(ALICE, "m", 0, ["a", "new"]),  # partly stored
        queue.submit(BOB, "m", 0, ["a"]),  # Alice's results are not Bob's
        queue.submit(ALICE, "m", 4, ["a"]),  # other dimensions: not stored
    )
    (cached, attached, finished), partly, other_owner, other_dims = answers
    assert (attached, finished) == (False, True)
    for answer in (partly, other_owner, other_dims):
        assert answer[1:] == (False, False)

    rows = await tasks_by_id(pool)
    assert len({rows[a[0]]["created_at"] for a in answers}) == 1  # one statement
    assert rows[cached]["remaining"] == 0 and rows[cached]["finished_at"] is not None
    assert rows[partly[0]]["remaining"] == 1 and rows[partly[0]]["finished_at"] is None
    assert rows[other_owner[0]]["remaining"] == 1
    assert rows[other_dims[0]]["remaining"] == 1

    items = await items_of(pool, cached)
    assert [(r["input"], r["state"], bytes(r["vector"]), r["tokens"]) for r in items] == [
        ("bb", "completed", vector(2), 7),
        ("a", "completed", vector(1), 7),
    ]
    items = await items_of(pool, partly[0])
    assert [(r["input"], r["state"]) for r in items] == [("a", "completed"), ("new", "pending")]
    assert [r["state"] for r in await items_of(pool, other_owner[0])] == ["pending"]
    assert [r["state"] for r in await items_of(pool, other_dims[0])] == ["pending"]

    task = await queue.read(cached)
    assert task is not None and task.status == "completed"
    assert task.results is not None
    assert [(r.index, r.vector, r.tokens) for r in task.results] == [
        (0, vector(2), 7),
        (1, vector(1), 7),
    ]
    # Only what was not stored goes to a worker (a claim takes one dimensions at a time).
    claimed = []
    for _ in range(3):
        claimed += (await queue.claim(WorkerInfo("w"), ["m"], 32, 0)).items
    assert sorted((i.input, i.dimensions) for i in claimed) == [
        ("a", 0),
        ("a", 4),
        ("new", 0),
    ]


async def test_one_request_the_database_refuses_fails_alone(app_client):
    """PostgreSQL text cannot hold NUL. The HTTP layer refuses such text before it reaches
    the queue; here it is handed to the queue directly, to see that one request the shared
    statement cannot store fails alone: the group is stored again a request at a time."""
    client = await app_client()
    queue, pool = setup(client)
    outcomes = await asyncio.gather(
        queue.submit(ALICE, "m", 0, ["fine"]),
        queue.submit(BOB, "m", 0, ["bad \x00 text"]),
        queue.submit(ALICE, "m", 0, ["also", "fine"]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], asyncpg.CharacterNotInRepertoireError)
    assert "fine" not in str(outcomes[1])  # the error names no neighbour's text
    assert not isinstance(outcomes[0], BaseException)
    assert not isinstance(outcomes[2], BaseException)
    assert outcomes[0][1:] == (False, False) and outcomes[2][1:] == (False, False)
    assert [r["input"] for r in await items_of(pool, outcomes[0][0])] == ["fine"]
    assert [r["input"] for r in await items_of(pool, outcomes[2][0])] == ["also", "fine"]
    assert await pool.fetchval("SELECT count(*) FROM embedq_task") == 2

    # The queue goes on: a retry attaches, the bad request alone still fails alone.
    again = await queue.submit(ALICE, "m", 0, ["fine"])
    assert again == (outcomes[0][0], True, False)
    with pytest.raises(asyncpg.CharacterNotInRepertoireError):
        await queue.submit(BOB, "m", 0, ["bad \x00 text"])


async def test_a_text_asyncpg_cannot_encode_fails_alone(app_client):
    """A lone surrogate fails in asyncpg before the statement is sent, with the whole
    argument array in its message: isolated, the error holds only its own request's text."""
    client = await app_client()
    queue, _pool = setup(client)
    outcomes = await asyncio.gather(
        queue.submit(ALICE, "m", 0, ["private neighbour text"]),
        queue.submit(BOB, "m", 0, ["\ud800"]),
        return_exceptions=True,
    )
    assert not isinstance(outcomes[0], BaseException)
    assert isinstance(outcomes[1], asyncpg.DataError)
    assert "private neighbour text" not in str(outcomes[1])
