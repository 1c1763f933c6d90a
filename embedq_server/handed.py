"""Tasks whose every input a submit handed to one claim waiting in this process.

When that claim's results are posted, the tasks' waiters are answered from the posted
vectors at once, before the completion statement stores them: the client gets the vectors
one statement sooner, and nothing is lost if it fails (the lease expires and the inputs
are computed again; the client already holds correct vectors).

Only handed tasks: answering tasks the claim statement took whole the same way was tried
twice and dropped. It gained 32 clients 2-4 points at best and cost 4-12% with the worker
50 ms away (the burst of answers and new requests it sets off as results arrive delays
the worker's next claim statement on the server's one event loop: bench/README).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from .records import ItemResult, Task, completed_task


@dataclass(frozen=True, slots=True)
class _Handed:
    task: Task  # as stored: nothing completed yet
    items: dict[int, int]  # item id -> the input's position in its request


class HandedTasks:
    """Per lease, the tasks handed to it whole. Entries go when the lease's results are
    posted or handed back, or once older than `keep_seconds` (a worker that vanished)."""

    def __init__(self, keep_seconds: float) -> None:
        self._keep = keep_seconds
        self._by_lease: dict[str, tuple[float, list[_Handed]]] = {}

    def __len__(self) -> int:
        return len(self._by_lease)

    def add(self, lease: str, task: Task, item_ids: Sequence[int], idxs: Sequence[int]) -> None:
        now = time.monotonic()
        self._prune(now)
        entry = self._by_lease.setdefault(lease, (now, []))
        entry[1].append(_Handed(task, dict(zip(item_ids, idxs, strict=True))))

    def forget(self, lease: str) -> None:
        self._by_lease.pop(lease, None)

    def finished(self, lease: str, results: Sequence[tuple[int, bytes, int]]) -> dict[str, Task]:
        """The lease's tasks that `results` finish whole, completed with those vectors.
        The lease's entry is used up either way: its results are being posted now."""
        entry = self._by_lease.pop(lease, None)
        if entry is None:
            return {}
        posted = {item_id: (vector, tokens) for item_id, vector, tokens in results}
        finished: dict[str, Task] = {}
        now = datetime.now(UTC)
        for handed in entry[1]:
            if not all(item_id in posted for item_id in handed.items):
                continue
            slots = sorted(
                (ItemResult(idx, *posted[item_id]) for item_id, idx in handed.items.items()),
                key=lambda r: r.index,
            )
            finished[handed.task.id] = completed_task(handed.task, tuple(slots), now)
        return finished

    def _prune(self, now: float) -> None:
        # Insertion order is age order: stop at the first entry young enough.
        for lease, (added, _) in list(self._by_lease.items()):
            if now - added <= self._keep:
                break
            del self._by_lease[lease]
