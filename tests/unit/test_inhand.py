"""VectorsInHand: the tasks a completion finished, built from the vectors this process
holds, and what it keeps (and drops) for tasks split over batches."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from embedq_server.inhand import VectorsInHand

NOW = datetime(2026, 11, 29, tzinfo=UTC)
VEC = 4  # bytes per vector in these tests


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def completion(
    batch: dict[uuid.UUID, list[tuple[int, int]]], finished: dict[uuid.UUID, int]
) -> tuple[dict[str, Any], list[tuple[int, bytes, int]]]:
    """complete_items' row and the posted results: `batch` maps a task to the (item id,
    input position) pairs stored; `finished` the tasks this batch finished to n_inputs
    (the others have 10 inputs)."""
    pairs = [(t, item_id, idx) for t, items in batch.items() for item_id, idx in items]
    row = {
        "ids": [item_id for _, item_id, _ in pairs],
        "item_tasks": [t for t, _, _ in pairs],
        "idxs": [idx for _, _, idx in pairs],
        "touched_ids": list(batch),
        "touched_owners": ["o"] * len(batch),
        "touched_models": ["m"] * len(batch),
        "touched_dimensions": [0] * len(batch),
        "touched_n_inputs": [finished.get(t, 10) for t in batch],
        "touched_created": [NOW] * len(batch),
        "finished_ids": list(finished),
        "finished_at": NOW,
    }
    results = [(item_id, bytes([item_id]) * VEC, item_id) for _, item_id, _ in pairs]
    return row, results


def vectors(task: Any) -> list[bytes]:
    return [r.vector for r in task.results]


def test_a_task_in_one_batch_is_answered_and_answered_ones_are_left_out() -> None:
    hand = VectorsInHand(keep_seconds=60)
    first, second = uuid.uuid4(), uuid.uuid4()
    row, results = completion({first: [(1, 0), (2, 1)], second: [(3, 0)]}, {first: 2, second: 1})
    both = hand.completed(row, results)  # type: ignore[arg-type]
    assert set(both) == {str(first), str(second)}
    assert vectors(both[str(first)]) == [b"\x01" * VEC, b"\x02" * VEC]
    assert both[str(first)].status == "completed" and both[str(first)].finished_at == NOW
    rest = hand.completed(row, results, {str(first)})  # type: ignore[arg-type]
    assert set(rest) == {str(second)}
    assert len(hand) == 0 and hand.held_bytes == 0


def test_a_task_split_over_batches_is_answered_by_the_batch_that_finishes_it() -> None:
    hand = VectorsInHand(keep_seconds=60)
    task = uuid.uuid4()
    row, results = completion({task: [(7, 2), (5, 0)]}, {})
    assert hand.completed(row, results) == {}  # type: ignore[arg-type]
    assert len(hand) == 1 and hand.held_bytes == 2 * VEC
    row, results = completion({task: [(6, 1)]}, {task: 3})
    answered = hand.completed(row, results)  # type: ignore[arg-type]
    assert [r.index for r in answered[str(task)].results or ()] == [0, 1, 2]
    assert vectors(answered[str(task)]) == [b"\x05" * VEC, b"\x06" * VEC, b"\x07" * VEC]
    assert len(hand) == 0 and hand.held_bytes == 0


def test_a_finished_task_missing_vectors_is_left_to_a_read() -> None:
    # Its other inputs came from the cache, or another server process stored them.
    hand = VectorsInHand(keep_seconds=60)
    task = uuid.uuid4()
    row, results = completion({task: [(1, 0)]}, {})
    hand.completed(row, results)  # type: ignore[arg-type]
    row, results = completion({task: [(2, 1)]}, {task: 3})
    assert hand.completed(row, results) == {}  # type: ignore[arg-type]
    assert len(hand) == 0 and hand.held_bytes == 0  # nothing left behind


def test_held_vectors_stay_within_the_budget_oldest_task_first() -> None:
    hand = VectorsInHand(keep_seconds=60, budget=3 * VEC)
    old, new = uuid.uuid4(), uuid.uuid4()
    hand.completed(*completion({old: [(1, 0), (2, 1)]}, {}))  # type: ignore[arg-type]
    hand.completed(*completion({new: [(3, 0), (4, 1)]}, {}))  # type: ignore[arg-type]
    assert hand.held_bytes == 2 * VEC and len(hand) == 1  # the old task's went
    assert hand.completed(*completion({old: [(5, 2)]}, {old: 3})) == {}  # type: ignore[arg-type]
    answered = hand.completed(*completion({new: [(6, 2)]}, {new: 3}))  # type: ignore[arg-type]
    assert set(answered) == {str(new)}


def test_held_vectors_go_once_older_than_keep_seconds() -> None:
    clock = Clock()
    hand = VectorsInHand(keep_seconds=60, clock=clock)
    stale, fresh = uuid.uuid4(), uuid.uuid4()
    hand.completed(*completion({stale: [(1, 0)]}, {}))  # type: ignore[arg-type]
    clock.now = 61
    hand.completed(*completion({fresh: [(2, 0)]}, {}))  # type: ignore[arg-type]
    assert len(hand) == 1 and hand.held_bytes == VEC
