"""Claims start where nothing older is pending, and never leave an input behind for good.

The floor (embedq_server/claimfloor.py) spares claims the dead index entries of every
input claimed since the last VACUUM. These tests move its clock by hand: the floor is
really applied (an input that went back to pending below it behind this process's back
waits), the periodic full scan finds that input, and requeues made here drop the floor
at once.
"""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from embedq_server.claimfloor import ClaimFloors
from embedq_server.keys import POOL, QUEUE
from tests.helpers import CLIENT, WORKER, claim, wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def queue_with_clock(app_client: Any, **settings: Any) -> tuple[TestClient, Clock]:
    client = await app_client(**settings)
    clock = Clock()
    queue = client.server.app[QUEUE]
    queue._floors = ClaimFloors(lag=1.0, full_scan_interval=60.0, clock=clock)
    resp = await client.post(
        "/v1/embeddings",
        json={"model": "m", "input": ["a", "b", "c"], "wait_seconds": 0},
        headers=CLIENT,
    )
    assert resp.status == 202, await resp.text()
    return client, clock


async def claim_one(client: TestClient) -> tuple[str, str, int]:
    batch = await claim(client, max_items=1)
    assert len(batch["items"]) == 1, batch
    item = batch["items"][0]
    return batch["lease"], item["input"], item["id"]


async def test_an_input_requeued_elsewhere_below_the_floor_waits_for_the_full_scan(
    app_client: Any,
) -> None:
    client, clock = await queue_with_clock(app_client)
    _, first, a_id = await claim_one(client)  # the first claim scans from the start
    clock.now += 2
    _, second, _ = await claim_one(client)  # from a's id: finds b
    clock.now += 2  # the floor is now b's id
    assert (first, second) == ("a", "b")
    # Another server process (or psql) puts a back: this process is not told.
    pool = client.server.app[POOL]
    await pool.execute(
        "UPDATE embedq_item SET state = 'pending', lease_token = NULL, lease_expires = NULL "
        "WHERE id = $1",
        a_id,
    )
    _, third, _ = await claim_one(client)
    assert third == "c"  # a is older, but below the floor
    assert (await claim(client, max_items=1))["items"] == []
    clock.now += 60  # the full scan is due
    _, fourth, _ = await claim_one(client)
    assert fourth == "a"


async def claim_a_and_b(client: TestClient, clock: Clock) -> tuple[str, int]:
    lease, first, a_id = await claim_one(client)
    clock.now += 2
    _, second, _ = await claim_one(client)
    clock.now += 2
    assert (first, second) == ("a", "b")
    return lease, a_id


async def test_a_hand_back_here_drops_the_floor_at_once(app_client: Any) -> None:
    client, clock = await queue_with_clock(app_client)
    lease, a_id = await claim_a_and_b(client, clock)
    resp = await client.post(
        "/worker/release", json={"worker": "w1", "lease": lease, "ids": [a_id]}, headers=WORKER
    )
    assert resp.status == 200, await resp.text()
    _, again, _ = await claim_one(client)
    assert again == "a"


async def test_a_retry_here_drops_the_floor_at_once(app_client: Any) -> None:
    client, clock = await queue_with_clock(app_client)
    lease, a_id = await claim_a_and_b(client, clock)
    resp = await client.post(
        "/worker/complete",
        json={
            "worker": "w1",
            "lease": lease,
            "results": [],
            "failures": [{"id": a_id, "error": "busy", "retry": True}],
        },
        headers=WORKER,
    )
    assert resp.status == 200, await resp.text()
    _, again, _ = await claim_one(client)
    assert again == "a"


async def test_a_lease_expired_here_drops_the_floor_at_once(app_client: Any) -> None:
    client, clock = await queue_with_clock(app_client, lease_seconds=0.5)
    _, a_id = await claim_a_and_b(client, clock)
    pool = client.server.app[POOL]

    async def a_requeued() -> bool:
        state = await pool.fetchval("SELECT state FROM embedq_item WHERE id = $1", a_id)
        return bool(state == "pending")

    await wait_until(a_requeued)  # this process's maintenance pass (every 0.2 s here)
    _, again, _ = await claim_one(client)
    assert again == "a"  # b expired too; the older one is not skipped
