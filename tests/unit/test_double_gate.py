"""The GPU-like gate of the test doubles: a call's own work (making its vectors) runs in its
GPU time, holding the gate, and the gate stays held for the rest of the call's cost, so
a call that meets an idle GPU starts at once and calls still pay their cost one at a time.
A queued call's GPU time starts when the call ahead was due to end, whenever the event
loop wakes it."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.doubles.common import DoubleState

COST_MS = 30.0


async def test_the_body_runs_holding_the_gate_and_the_call_still_pays_its_cost() -> None:
    state = DoubleState(fixed_ms=COST_MS)
    events: list[str] = []

    async def call(name: str) -> None:
        async with state.computing({"call": name}, 1):
            events.append(f"{name} body, gate held: {state._gate.locked()}")
        events.append(f"{name} done")

    await asyncio.gather(call("first"), call("second"))
    # The second call's body waits for the first call's whole cost, not just its body.
    assert events == [
        "first body, gate held: True",
        "first done",
        "second body, gate held: True",
        "second done",
    ]
    assert state.calls == 2 and state.batch_sizes == [1, 1]
    # Each call's modelled cost exactly: the second queued, so it started where the first ended.
    assert state.gate_seconds == pytest.approx(2 * COST_MS / 1000)


async def test_only_the_rest_of_the_cost_is_slept_after_the_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_sleep = asyncio.sleep
    slept: list[float] = []

    async def recorded(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(seconds)

    state = DoubleState(fixed_ms=COST_MS)
    monkeypatch.setattr(asyncio, "sleep", recorded)
    async with state.computing({}, 1):
        await real_sleep(0.01)  # the body: its vectors take part of the cost
    assert len(slept) == 1 and 0 < slept[0] <= (COST_MS - 10) / 1000
    slept.clear()
    async with state.computing({}, 1):
        await real_sleep(0.04)  # longer than the whole cost: nothing is left to sleep
    assert slept == []


async def test_a_queued_call_starts_when_the_one_ahead_was_due_not_when_the_loop_woke(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every wake-up here comes `late_ms` after its due time, as on a loaded host. The second
    call, queued behind the first, must not pay that lateness: its sleep is shortened by
    it, and the modelled GPU was busy for exactly the two calls' costs."""
    late_ms = 20.0
    real_sleep = asyncio.sleep
    slept: list[float] = []

    async def late(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(seconds + late_ms / 1000)

    state = DoubleState(fixed_ms=COST_MS)
    monkeypatch.setattr(asyncio, "sleep", late)

    async def call() -> None:
        async with state.computing({}, 1):
            pass

    await asyncio.gather(call(), call())
    assert len(slept) == 2
    assert slept[0] <= COST_MS / 1000
    # The first call's lateness already ran into the second call's GPU time.
    assert slept[1] <= (COST_MS - late_ms) / 1000
    assert state.gate_seconds == pytest.approx(2 * COST_MS / 1000)


async def test_a_call_that_meets_an_idle_gpu_starts_on_arrival() -> None:
    """After an idle spell the GPU's clock does not run ahead: a call is never charged for
    time before it arrived, nor started before it."""
    state = DoubleState(fixed_ms=5.0)
    async with state.computing({}, 1):
        pass
    await asyncio.sleep(0.03)  # idle
    before = time.perf_counter()
    async with state.computing({}, 1):
        pass
    assert time.perf_counter() - before >= 0.0049  # it paid its whole cost after arriving
    assert state.gate_seconds == pytest.approx(0.010)
