"""Group commit (`Grouped`): calls arriving while a run is in flight share the next run.

Everything is choreographed with events and loop turns, never with timing: an instrumented
`run` records each group it gets and, while held, waits for the test to let it finish.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from embedq_server.grouping import Grouped

T = TypeVar("T")

GUARD = 10.0  # seconds: a broken choreography fails here instead of hanging the suite


class Boom(Exception):
    pass


class Run:
    """An instrumented `run`: records each group, counts the runs in flight, and (while
    `hold` is set) waits for the test to open that run's gate before answering. Answers
    name the item and the run that computed it, so a mixed-up answer is seen."""

    def __init__(self, *, hold: bool = True) -> None:
        self.hold = hold
        self.groups: list[list[int]] = []
        self.gates: list[asyncio.Event] = []
        self.active = 0
        self.most_active = 0
        self.cancelled = 0
        self.fail_when: int | None = None  # a group holding this item raises Boom
        self.on_return: Any = None  # called just before a run returns
        self._changed = asyncio.Event()

    async def __call__(self, items: list[int]) -> list[tuple[int, int]]:
        number = len(self.groups)
        self.groups.append(list(items))
        gate = asyncio.Event()
        self.gates.append(gate)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        self._changed.set()
        try:
            if self.hold:
                await gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
        if self.on_return is not None:
            self.on_return(items)
        if self.fail_when is not None and self.fail_when in items:
            raise Boom(f"run {number}")
        return [(item, number) for item in items]

    async def started(self, count: int) -> None:
        """Wait until `count` runs have started."""

        async def wait() -> None:
            while len(self.groups) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), GUARD)

    def release(self, number: int) -> None:
        self.gates[number].set()


async def turns(n: int = 5) -> None:
    """Let the loop run a few turns (enough for any call already made to reach `run`)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def guarded(aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, GUARD)


async def test_an_idle_call_runs_at_once_alone() -> None:
    run = Run()
    grouped: Grouped[int, tuple[int, int]] = Grouped(run, "t")
    call = asyncio.create_task(grouped(7))
    await turns()  # no timer, no window to fill: a few loop turns and it is running
    assert run.groups == [[7]]
    run.release(0)
    assert await guarded(call) == (7, 0)


async def test_calls_made_while_a_run_is_in_flight_share_the_next_run_in_order() -> None:
    run = Run()
    grouped: Grouped[int, tuple[int, int]] = Grouped(run, "t")
    first = asyncio.create_task(grouped(0))
    await run.started(1)
    later = []
    for item in (5, 3, 9, 1):  # one per loop turn: the arrival order is this order
        later.append(asyncio.create_task(grouped(item)))
        await turns(1)
    await turns()
    assert run.groups == [[0]]  # nothing else starts while the one run is in flight
    run.release(0)
    await run.started(2)
    assert run.groups == [[0], [5, 3, 9, 1]]
    run.release(1)
    assert await guarded(first) == (0, 0)
    assert await guarded(asyncio.gather(*later)) == [(5, 1), (3, 1), (9, 1), (1, 1)]
    assert run.most_active == 1


async def test_calls_of_one_loop_turn_share_one_run() -> None:
    run = Run(hold=False)
    grouped: Grouped[int, tuple[int, int]] = Grouped(run, "t")
    answers = await guarded(asyncio.gather(grouped(1), grouped(2), grouped(3)))
    assert list(answers) == [(1, 0), (2, 0), (3, 0)]
    assert run.groups == [[1, 2, 3]]


async def test_a_call_made_in_the_same_turn_after_the_first_joins_its_run() -> None:
    """Made by a callback that runs right after the first call, in the same loop turn (so
    after the first call has already set its run going): it still joins that run."""
    run = Run(hold=False)
    grouped: Grouped[int, tuple[int, int]] = Grouped(run, "t")
    loop = asyncio.get_running_loop()
    calls: list[asyncio.Task[tuple[int, int]]] = [asyncio.create_task(grouped(1))]
    loop.call_soon(lambda: calls.append(asyncio.create_task(grouped(2))))
    await turns(1)
    answers = await guarded(asyncio.gather(*calls))
    assert run.groups == [[1, 2]]
    assert answers == [(1, 0), (2, 0)]


async def test_in_flight_bounds_the_runs_at_once() -> None:
    run = Run()
    grouped: Grouped[int, tuple[int, int]] = Grouped(run, "t", in_flight=2)
    calls = [asyncio.create_task(grouped(1))]
    await run.started(1)
    calls.append(asyncio.create_task(grouped(2)))
    await run.started(2)  # a second run starts while the first is in flight
    assert run.active == 2
    calls += [asyncio.create_task(grouped(3)), asyncio.create_task(grouped(4))]
    await turns()
    assert run.groups == [[1], [2]]  # but not a third
    run.release(0)  # a slot frees: the waiting calls go, together
    await run.started(3)
    assert run.groups == [[1], [2], [3, 4]]
    assert run.active == 2
    calls.append(asyncio.create_task(grouped(5)))
    await turns()
    assert len(run.groups) == 3
    run.release(1)
    await run.started(4)
    assert run.groups[3] == [5]
    run.release(2)
    run.release(3)
    answers = await guarded(asyncio.gather(*calls))
    assert answers == [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3)]
    assert run.most_active == 2


async def test_max_group_splits_a_big_backlog() -> None:
    run = Run()
    grouped: Grouped[int, tuple[int, int]] = Grouped(run, "t", max_group=3)
    first = asyncio.create_task(grouped(0))
    await run.started(1)
    backlog = [asyncio.create_task(grouped(i)) for i in range(1, 8)]
    await turns()
    run.hold = False
    run.release(0)
    answers = await guarded(asyncio.gather(first, *backlog))
    assert run.groups == [[0], [1, 2, 3], [4, 5, 6], [7]]
    assert answers == [(0, 0), (1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2), (7, 3)]


async def test_max_group_splits_the_calls_of_one_turn() -> None:
    run = Run(hold=False)
    grouped: Grouped[int, tuple[int, int]] = Grouped(run, "t", max_group=2)
    answers = await guarded(asyncio.gather(*(grouped(i) for i in range(5))))
    assert run.groups == [[0, 1], [2, 3], [4]]
    assert answers == [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2)]


async def test_an_error_reaches_every_caller_of_its_group_and_only_them() -> None:
    run = Run()
    run.fail_when = 1
    grouped: Grouped[int, tuple[int, int]] = Grouped(run, "t", max_group=2)
    first = asyncio.create_task(grouped(0))
    await run.started(1)
    failing = [asyncio.create_task(grouped(1)), asyncio.create_task(grouped(2))]
    after = asyncio.create_task(grouped(3))  # the next group, in the same backlog
    await turns()
    run.hold = False
    run.release(0)
    outcomes = await guarded(asyncio.gather(first, *failing, after, return_exceptions=True))
    assert run.groups == [[0], [1, 2], [3]]
    assert outcomes[0] == (0, 0)
    assert isinstance(outcomes[1], Boom) and str(outcomes[1]) == "run 1"
    assert outcomes[2] is outcomes[1]  # the same error, to each caller of the group
    assert outcomes[3] == (3, 2)
    # The failure left nothing behind: a later call runs and answers.
    assert await guarded(grouped(4)) == (4, 3)


async def test_an_error_of_an_idle_run_does_not_stop_later_calls() -> None:
    run = Run(hold=False)
    run.fail_when = 1
    grouped: Grouped[int, tuple[int, int]] = Grouped(run, "t")
    with pytest.raises(Boom):
        await guarded(grouped(1))
    assert await guarded(grouped(2)) == (2, 1)


async def test_a_cancelled_caller_does_not_cancel_its_groups_run() -> None:
    run = Run()
    grouped: Grouped[int, tuple[int, int]] = Grouped(run, "t")
    first = asyncio.create_task(grouped(0))
    await run.started(1)
    quitter_before = asyncio.create_task(grouped(1))  # gives up before its run starts
    stayer = asyncio.create_task(grouped(2))
    quitter_during = asyncio.create_task(grouped(3))  # gives up while its run is in flight
    await turns()
    quitter_before.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter_before
    run.release(0)
    await run.started(2)
    # (whether the caller who already gave up is still in the group is left open)
    assert [i for i in run.groups[1] if i != 1] == [2, 3]
    quitter_during.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter_during
    await turns()
    assert run.active == 1 and run.cancelled == 0  # the shared run goes on
    run.release(1)
    assert await guarded(stayer) == (2, 1)
    assert await guarded(first) == (0, 0)
    assert run.cancelled == 0
    run.hold = False
    assert await guarded(grouped(4)) == (4, 2)


async def test_cancelling_the_caller_that_started_the_run_does_not_cancel_it() -> None:
    run = Run()
    grouped: Grouped[int, tuple[int, int]] = Grouped(run, "t")
    starter = asyncio.create_task(grouped(1))  # idle: this call starts the run
    neighbour = asyncio.create_task(grouped(2))  # same turn: the same group
    await run.started(1)
    assert run.groups == [[1, 2]]
    starter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starter
    await turns()
    assert run.active == 1 and run.cancelled == 0
    run.release(0)
    assert await guarded(neighbour) == (2, 0)
    assert run.cancelled == 0


async def test_a_cancelled_callers_failed_answer_makes_no_noise() -> None:
    """The error of a group whose caller gave up is marked seen: no "Future exception was
    never retrieved" from the loop when the answer is collected."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        run = Run()
        run.fail_when = 1
        grouped: Grouped[int, tuple[int, int]] = Grouped(run, "t")
        first = asyncio.create_task(grouped(0))
        await run.started(1)
        quitter = asyncio.create_task(grouped(1))
        stayer = asyncio.create_task(grouped(2))
        await turns()
        run.release(0)
        await run.started(2)
        quitter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await quitter
        run.release(1)
        with pytest.raises(Boom):
            await guarded(stayer)
        assert await guarded(first) == (0, 0)
        await guarded(grouped.drain())
        del quitter, stayer, first
        for _ in range(3):
            gc.collect()
            await turns(1)
        assert reported == []
    finally:
        loop.set_exception_handler(previous)


async def test_a_cancelled_lone_caller_with_a_failing_run_makes_no_noise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = Run()
    run.fail_when = 1
    grouped: Grouped[int, tuple[int, int]] = Grouped(run, "t")
    quitter = asyncio.create_task(grouped(1))
    await run.started(1)
    quitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter
    run.release(0)
    await guarded(grouped.drain())
    del quitter
    with caplog.at_level("ERROR", logger="asyncio"):
        for _ in range(3):
            gc.collect()
            await turns(1)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    run.hold = False
    assert await guarded(grouped(2)) == (2, 1)


def call_as_the_first_run_ends(
    run: Run, grouped: Grouped[int, tuple[int, int]]
) -> list[asyncio.Task[tuple[int, int]]]:
    """Make `grouped(2)` as the run for [1] ends, before its flusher is done; the call's
    task lands in the list returned."""
    spawned: list[asyncio.Task[tuple[int, int]]] = []

    def call_once(items: list[int]) -> None:
        if items == [1]:
            spawned.append(asyncio.create_task(grouped(2)))

    run.on_return = call_once
    return spawned


async def test_a_call_made_as_the_run_returns_is_answered() -> None:
    """The call arrives in the loop turn right after the last run returned, before the
    finished flusher's own completion is processed: it must start a run of its own."""
    run = Run(hold=False)
    grouped: Grouped[int, tuple[int, int]] = Grouped(run, "t")
    spawned = call_as_the_first_run_ends(run, grouped)
    assert await guarded(grouped(1)) == (1, 0)
    assert len(spawned) == 1
    assert await guarded(spawned[0]) == (2, 1)
    assert run.groups == [[1], [2]]


async def test_a_call_made_as_a_failing_run_ends_is_answered() -> None:
    run = Run(hold=False)
    run.fail_when = 1
    grouped: Grouped[int, tuple[int, int]] = Grouped(run, "t")
    spawned = call_as_the_first_run_ends(run, grouped)
    with pytest.raises(Boom):
        await guarded(grouped(1))
    assert await guarded(spawned[0]) == (2, 1)
    assert run.groups == [[1], [2]]


@pytest.mark.parametrize("in_flight", [1, 2, 3])
async def test_calls_chained_on_each_answer_are_never_stranded(in_flight: int) -> None:
    """Each answer, as it is delivered, makes the next call; and each run, as it returns,
    makes another: every call is answered."""
    run = Run(hold=False)
    grouped: Grouped[int, tuple[int, int]] = Grouped(run, "t", in_flight=in_flight)
    calls: list[asyncio.Task[tuple[int, int]]] = []
    answered: list[int] = []
    finished = {30: asyncio.Event(), 130: asyncio.Event()}

    def call(item: int, then: Any) -> None:
        calls.append(asyncio.create_task(grouped(item)))
        calls[-1].add_done_callback(then)

    def note(task: asyncio.Task[tuple[int, int]]) -> None:
        item = task.result()[0]
        answered.append(item)
        if item in finished:
            finished[item].set()

    def chain(task: asyncio.Task[tuple[int, int]]) -> None:
        note(task)
        item = task.result()[0]
        if item < 30:
            call(item + 1, chain)

    def call_from_run(items: list[int]) -> None:
        for item in items:
            if 100 <= item < 130:
                call(item + 1, note)

    run.on_return = call_from_run
    call(0, chain)
    call(100, note)
    await guarded(finished[30].wait())
    await guarded(finished[130].wait())
    assert sorted(answered) == list(range(31)) + list(range(100, 131))
    await guarded(grouped.drain())


async def test_an_error_isolate_names_is_retried_call_by_call_so_only_the_bad_call_fails():
    run = Run(hold=False)
    run.fail_when = 2
    grouped: Grouped[int, tuple[int, int]] = Grouped(
        run, "t", isolate=lambda exc: isinstance(exc, Boom)
    )
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(grouped(i) for i in (1, 2, 3)), return_exceptions=True), GUARD
    )
    assert run.groups[0] == [1, 2, 3]  # tried together first
    assert run.groups[1:] == [[1], [2], [3]]  # then a call at a time
    assert outcomes[0] == (1, 1) and outcomes[2] == (3, 3)
    assert isinstance(outcomes[1], Boom)


async def test_an_error_isolate_does_not_name_fails_the_whole_group_at_once():
    run = Run(hold=False)
    run.fail_when = 2
    grouped: Grouped[int, tuple[int, int]] = Grouped(
        run, "t", isolate=lambda exc: isinstance(exc, KeyError)
    )
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(grouped(i) for i in (1, 2, 3)), return_exceptions=True), GUARD
    )
    assert run.groups == [[1, 2, 3]]  # an outage is not retried call by call
    assert all(isinstance(o, Boom) for o in outcomes)
