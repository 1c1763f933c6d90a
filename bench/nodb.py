"""embedq's server with the database taken off the path: a yardstick, never a mode to run.

The same process, HTTP API, middlewares, checks, log lines and worker channel as
`embedq-server`, and embedq's own worker claims from it, but the queue's verbs keep
requests, claims and results in memory: no insert, no claim statement, no completion
statement, nothing stored, nothing that survives a restart. What c32 gives through it is
the most any design that writes behind the GPU's path could give with this server and
this worker on this machine (`python -m bench.run --only c32-nodb,c32`).

Run as `python -m bench.nodb serve` with embedq-server's environment.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import asyncpg

import embedq_server.app
from embedq_server.cli import main as server_main
from embedq_server.handoff import Offer, Submission
from embedq_server.listener import Listener
from embedq_server.queue import Queue
from embedq_server.records import (
    Claim,
    ClaimedItem,
    Failure,
    ItemResult,
    Task,
    WorkerInfo,
    completed_task,
    fingerprint,
    untouched_task,
)
from embedq_server.settings import Settings
from embedq_server.sql import QUERIES


class MemoryQueue(Queue):
    """Requests wait in a deque for the next claim; a completion answers their waiters."""

    def __init__(self, pool: asyncpg.Pool, listener: Listener, settings: Settings) -> None:
        super().__init__(pool, listener, settings)
        self._ids = itertools.count(1)
        self._pending: collections.deque[ClaimedItem] = collections.deque()
        self._arrived = asyncio.Event()
        self._open: dict[str, tuple[Task, asyncio.Future[Task], dict[int, ItemResult]]] = {}
        self._items: dict[int, tuple[str, int]] = {}  # item id -> (task id, position)

    async def pending_inputs(self) -> int:
        return len(self._pending)

    async def submit_and_wait(
        self, owner: str, model: str, dimensions: int, inputs: Sequence[str], timeout: float
    ) -> Task | None:
        task, done, _ = self._enqueue(owner, model, dimensions, inputs)
        try:
            return await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            return task  # still pending: answered 503 as embedq answers it

    def _enqueue(
        self, owner: str, model: str, dimensions: int, inputs: Sequence[str]
    ) -> tuple[Task, asyncio.Future[Task], list[int]]:
        """The request's inputs, ready for the next claim; its task, the future its
        completion sets, and its inputs' ids."""
        task_id = str(uuid.uuid4())
        task = untouched_task(task_id, owner, model, dimensions, len(inputs), datetime.now(UTC))
        done: asyncio.Future[Task] = asyncio.get_running_loop().create_future()
        self._open[task_id] = (task, done, {})
        ids = [next(self._ids) for _ in inputs]
        for idx, (item_id, text) in enumerate(zip(ids, inputs, strict=True)):
            self._items[item_id] = (task_id, idx)
            self._pending.append(ClaimedItem(item_id, task_id, text, model, dimensions, 1))
        self._arrived.set()
        return task, done, ids

    async def claim(
        self,
        worker: WorkerInfo,
        models: Sequence[str],
        max_items: int,
        wait: float,
        gone: Callable[[], bool] = lambda: False,
    ) -> Claim:
        await self.touch_worker(worker)  # GET /v1/models and the status page still see it
        lease = str(uuid.uuid4())
        if not self._pending:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait)
            except TimeoutError:
                return Claim(lease, [])
        if gone():
            return Claim(lease, [])
        take = max(1, min(max_items, self.settings.max_batch))
        items = [self._pending.popleft() for _ in range(min(take, len(self._pending)))]
        return Claim(lease, items)

    async def heartbeat(self, lease: str, worker: WorkerInfo) -> int:
        return 1

    async def complete(
        self,
        lease: str,
        results: Sequence[tuple[int, bytes, int]],
        failures: Sequence[Failure] = (),
        model_revision: str | None = None,
    ) -> tuple[list[int], list[int]]:
        done: list[int] = []
        for item_id, vector, tokens in results:
            found = self._items.pop(item_id, None)
            if found is None:
                continue
            task_id, idx = found
            task, finished, got = self._open[task_id]
            got[idx] = ItemResult(idx, vector, tokens)
            done.append(item_id)
            if len(got) == task.n_inputs:
                del self._open[task_id]
                ordered = tuple(got[i] for i in range(task.n_inputs))
                if not finished.done():
                    finished.set_result(completed_task(task, ordered, datetime.now(UTC)))
        return done, []  # failures are not expected of the double; they stay unanswered

    async def release(self, lease: str, ids: Sequence[int]) -> list[int]:
        """Nothing to hand back: a worker that stops posts what it computed first, and the
        yardstick's waiters are not kept past its scenario."""
        return []


class BehindQueue(MemoryQueue):
    """MemoryQueue's path, with PostgreSQL's writes done behind it: each group of requests
    is inserted (leased, as a hand-off stores it) after its inputs were queued for the
    worker, and each posted batch is stored (the completion statement: results, cache,
    tasks settled) after its waiters were answered. Nothing waits for a statement, but
    PostgreSQL does all the writing embedq's queue does on the same cores: what c32 gives
    through it is the most a queue that wrote behind the GPU's path could give here."""

    def __init__(self, pool: asyncpg.Pool, listener: Listener, settings: Settings) -> None:
        super().__init__(pool, listener, settings)
        self._ids = itertools.count(10**15)  # above the identity sequence's values
        self._lease = uuid.uuid4()  # every stored input is leased to this one
        self._to_insert: list[tuple[Submission, list[int]]] = []  # with their inputs' ids
        self._inserted: dict[int, asyncio.Future[None]] = {}  # item id -> its group's insert
        self._group: asyncio.Future[None] | None = None  # the insert the next request joins

    def _enqueue(
        self, owner: str, model: str, dimensions: int, inputs: Sequence[str]
    ) -> tuple[Task, asyncio.Future[Task], list[int]]:
        task, done, ids = super()._enqueue(owner, model, dimensions, inputs)
        request = Submission(
            uuid.UUID(task.id),
            owner,
            fingerprint(owner, model, dimensions, inputs),
            model,
            dimensions,
            inputs,
            None,  # handed ahead: no cache probe, as embedq's
        )
        self._to_insert.append((request, ids))
        if self._group is None or len(self._to_insert) == 1:
            # the first of a group: its insert goes in the next round of the loop
            self._group = asyncio.get_running_loop().create_future()
            self._in_background(self._insert(self._group), "behind-insert")
        group = self._group
        for item_id in ids:
            self._inserted[item_id] = group
        return task, done, ids

    async def _insert(self, stored: asyncio.Future[None]) -> None:
        await asyncio.sleep(0)  # the requests that arrived together go in one statement
        group, self._to_insert = self._to_insert, []
        # the reserve lease, as the offer of a claim waiting here: embedq's own group
        # insert stores the inputs leased to it, under the ids they were handed with
        reserve = Offer(frozenset(), 0, self._lease, "behind", stored.get_loop().create_future())
        try:
            await self._insert_group(
                [request for request, _ in group],
                [reserve] * len(group),
                {k: ids for k, (_, ids) in enumerate(group)},
            )
        finally:
            stored.set_result(None)

    async def complete(
        self,
        lease: str,
        results: Sequence[tuple[int, bytes, int]],
        failures: Sequence[Failure] = (),
        model_revision: str | None = None,
    ) -> tuple[list[int], list[int]]:
        inserts = {self._inserted.pop(r[0]) for r in results if r[0] in self._inserted}
        answered = await super().complete(lease, results, failures, model_revision)
        self._in_background(self._store(inserts, results, model_revision), "behind-store")
        return answered

    async def _store(
        self,
        inserts: set[asyncio.Future[None]],
        results: Sequence[tuple[int, bytes, int]],
        model_revision: str | None,
    ) -> None:
        await asyncio.gather(*inserts)
        await self.pool.fetchrow(
            QUERIES["complete_items"],
            self._lease,
            [r[0] for r in results],
            [r[1] for r in results],
            [r[2] for r in results],
            model_revision,
            self.settings.cache,
        )

    async def written(self) -> None:
        """Until every write started so far has ended (for tests)."""
        while self._background:
            await asyncio.gather(*self._background)


class ProbedBehindQueue(BehindQueue):
    """BehindQueue with the one read a queue writing behind must still do before a text
    goes to a worker (repeated texts cost no GPU time): embedq's probe of the result cache
    and of an identical earlier request, one statement per request, waited for."""

    async def submit_and_wait(
        self, owner: str, model: str, dimensions: int, inputs: Sequence[str], timeout: float
    ) -> Task | None:
        await self.pool.fetchrow(
            QUERIES["probe_request"],
            owner,
            fingerprint(owner, model, dimensions, inputs),
            model,
            dimensions,
            self._cache_scope(owner),
            list(inputs),
        )
        return await super().submit_and_wait(owner, model, dimensions, inputs, timeout)


QUEUES: dict[str, type[Queue]] = {
    "nodb": MemoryQueue,
    "behind": BehindQueue,
    "behind-probe": ProbedBehindQueue,
}


def main(argv: Sequence[str] | None = None) -> int:
    # create_app builds this queue
    vars(embedq_server.app)["Queue"] = QUEUES[os.environ.get("BENCH_QUEUE", "nodb")]
    return server_main(argv)


if __name__ == "__main__":
    sys.exit(main())
