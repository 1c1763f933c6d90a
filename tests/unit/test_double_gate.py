"""The GPU-like gate of the test doubles: a call's own work (making its vectors) runs in its
GPU time, holding the gate, and the gate stays held for the rest of the call's cost, so
a call that meets an idle GPU starts at once and calls still pay their cost one at a time."""

from __future__ import annotations

import asyncio

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
    assert state.gate_seconds >= 2 * COST_MS / 1000  # a lower bound: each call's full cost


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
