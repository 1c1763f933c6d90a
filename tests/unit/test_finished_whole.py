"""finished_whole builds the tasks a completion finished whole from the posted vectors,
leaving out those the early answer already gave (handed tasks)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from embedq_server.records import finished_whole

NOW = datetime(2026, 11, 29, tzinfo=UTC)


def completion_row(tasks: dict[uuid.UUID, list[int]]) -> dict[str, object]:
    """What complete_items returns for tasks finished whole: task -> its item ids."""
    ids = [i for items in tasks.values() for i in items]
    return {
        "ids": ids,
        "item_tasks": [t for t, items in tasks.items() for _ in items],
        "idxs": [n for items in tasks.values() for n in range(len(items))],
        "whole_ids": list(tasks),
        "whole_owners": ["o"] * len(tasks),
        "whole_models": ["m"] * len(tasks),
        "whole_dimensions": [0] * len(tasks),
        "whole_n_inputs": [len(items) for items in tasks.values()],
        "whole_created": [NOW] * len(tasks),
        "finished_at": NOW,
    }


def test_tasks_already_answered_are_left_out():
    first, second = uuid.uuid4(), uuid.uuid4()
    row = completion_row({first: [1, 2], second: [3]})
    results = [(1, b"a" * 4, 1), (2, b"b" * 4, 1), (3, b"c" * 4, 2)]
    both = finished_whole(row, results)  # type: ignore[arg-type]
    assert set(both) == {str(first), str(second)}
    assert [r.vector for r in both[str(first)].results or ()] == [b"a" * 4, b"b" * 4]
    rest = finished_whole(row, results, {str(first)})  # type: ignore[arg-type]
    assert set(rest) == {str(second)}
    assert rest[str(second)] == both[str(second)]
    assert finished_whole(row, results, {str(first), str(second)}) == {}  # type: ignore[arg-type]
