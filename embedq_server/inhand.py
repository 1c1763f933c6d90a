"""Answering finished tasks from the vectors this process holds, without reading them back.

A completion knows the vectors it just stored. A task whose inputs all arrive in one
batch is answered from them at once; a task split over several batches (a 100-text
request against batches of 64) needs the vectors of the earlier batches too, so those are
kept here until the batch that finishes the task arrives. Held vectors are bounded by
bytes and age: when the budget is spent, or the rest of a task went to another server
process, failed or never came, the task is simply read back as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Sequence

import asyncpg

from .records import ItemResult, Task, completed_task, untouched_task

DEFAULT_BUDGET = 32 * 1024 * 1024  # bytes of vectors held for unfinished tasks


class VectorsInHand:
    """Per unfinished task, the vectors this process stored for it so far."""

    def __init__(
        self,
        keep_seconds: float,
        budget: int = DEFAULT_BUDGET,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keep = keep_seconds
        self._budget = budget
        self._clock = clock
        self._held: dict[str, tuple[float, list[ItemResult]]] = {}  # oldest first
        self._bytes = 0

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._held)

    def completed(
        self,
        row: asyncpg.Record,
        results: Sequence[tuple[int, bytes, int]],
        answered: Container[str] = (),
    ) -> dict[str, Task]:
        """Take a completion's stored results (complete_items' `row`, the posted
        `results`); return the tasks it finished whose every vector is in hand, leaving
        out those already answered (`answered`). The vectors of tasks it did not finish
        are kept for the completion that will."""
        posted = {item_id: (vector, tokens) for item_id, vector, tokens in results}
        batch: dict[str, list[ItemResult]] = {}
        for item_id, task_id, idx in zip(row["ids"], row["item_tasks"], row["idxs"], strict=True):
            vector, tokens = posted[item_id]
            batch.setdefault(str(task_id), []).append(ItemResult(idx, vector, tokens))
        finished_here = {str(t) for t in row["finished_ids"] or ()}
        stored_as = {
            str(task_id): (owner, model, dimensions, n_inputs, created_at)
            for task_id, owner, model, dimensions, n_inputs, created_at in zip(
                row["touched_ids"] or (),
                row["touched_owners"] or (),
                row["touched_models"] or (),
                row["touched_dimensions"] or (),
                row["touched_n_inputs"] or (),
                row["touched_created"] or (),
                strict=True,
            )
        }
        now = self._clock()
        finished: dict[str, Task] = {}
        for task_id, slots in batch.items():
            if task_id not in finished_here:
                self._hold(task_id, slots, now)
                continue
            earlier = self._release(task_id)
            if task_id in answered:
                continue
            owner, model, dimensions, n_inputs, created_at = stored_as[task_id]
            items = {r.index: r for r in earlier + slots}
            if len(items) != n_inputs:  # some came from the cache or another process
                continue
            stored = untouched_task(task_id, owner, model, dimensions, n_inputs, created_at)
            ordered = tuple(items[i] for i in sorted(items))
            finished[task_id] = completed_task(stored, ordered, row["finished_at"])
        self._prune(now)
        return finished

    def _hold(self, task_id: str, slots: list[ItemResult], now: float) -> None:
        entry = self._held.get(task_id)
        if entry is None:
            self._held[task_id] = (now, list(slots))  # insertion order: first arrival
        else:
            entry[1].extend(slots)
        self._bytes += sum(len(r.vector) for r in slots)

    def _release(self, task_id: str) -> list[ItemResult]:
        _, held = self._held.pop(task_id, (0.0, []))
        self._bytes -= sum(len(r.vector) for r in held)
        return held

    def _prune(self, now: float) -> None:
        """The oldest tasks go first: over the budget, or older than keep_seconds."""
        while self._held:
            task_id, (added, _) = next(iter(self._held.items()))
            if self._bytes <= self._budget and now - added <= self._keep:
                break
            self._release(task_id)
