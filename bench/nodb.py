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
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import asyncpg

import embedq_server.app
from embedq_server.cli import main as server_main
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
    untouched_task,
)
from embedq_server.settings import Settings


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
        task_id = str(uuid.uuid4())
        task = untouched_task(task_id, owner, model, dimensions, len(inputs), datetime.now(UTC))
        done: asyncio.Future[Task] = asyncio.get_running_loop().create_future()
        self._open[task_id] = (task, done, {})
        for idx, text in enumerate(inputs):
            item_id = next(self._ids)
            self._items[item_id] = (task_id, idx)
            self._pending.append(ClaimedItem(item_id, task_id, text, model, dimensions, 1))
        self._arrived.set()
        try:
            return await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            return task  # still pending: answered 503 as embedq answers it

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


def main(argv: Sequence[str] | None = None) -> int:
    vars(embedq_server.app)["Queue"] = MemoryQueue  # create_app builds this queue
    return server_main(argv)


if __name__ == "__main__":
    sys.exit(main())
