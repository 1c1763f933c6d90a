"""The worker's pacing: what a batch costs, how long a claim's round trip takes, and the
backend calls in flight (which compute, which wait, when they all end)."""

from __future__ import annotations

import pytest

from embedq_worker.pacing import CLAIM_MARGIN, MIN_SAMPLES, CostModel, Pipeline, RoundTrips


def test_cost_model_learns_fixed_plus_per_text() -> None:
    model = CostModel()
    assert model.estimate(10) is None  # nothing seen: no guess
    for size in (1, 8, 32, 64, 16, 4) * 5:
        model.observe(size, 0.005 + 0.0005 * size)
    assert model.estimate(32) == pytest.approx(0.021, rel=0.01)
    assert model.estimate(1) == pytest.approx(0.0055, rel=0.01)


def test_cost_model_with_one_batch_size_uses_the_average() -> None:
    model = CostModel()
    for _ in range(5):
        model.observe(64, 0.037)
    assert model.estimate(64) == pytest.approx(0.037)


def test_cost_model_follows_a_backend_that_slows_down() -> None:
    model = CostModel()
    for size in (8, 16) * 10:
        model.observe(size, 0.001 * size)
    for size in (8, 16) * 30:
        model.observe(size, 0.004 * size)
    assert model.estimate(16) == pytest.approx(0.064, rel=0.05)


def test_round_trips_take_the_median_of_recent_claims() -> None:
    trips = RoundTrips()
    assert trips.estimate() == 0.0
    for seconds in (0.05, 0.002, 3.0, 0.004, 0.006):  # 3.0: a claim that long-polled
        trips.observe(seconds)
    assert trips.estimate() == 0.006  # not the fastest, not pulled up by the long poll


# -- Pipeline ------------------------------------------------------------------------------


def learn_pair(pipeline: Pipeline, texts: int, fresh: float, queued: float, at: float) -> float:
    """One unit, two calls: the first meets the free unit and computes `fresh` seconds, the
    second waits behind it and computes `queued` seconds once it ends. Returns the end."""
    first, second = object(), object()
    pipeline.dispatch(first, texts, at)
    pipeline.dispatch(second, texts, at + 0.5)
    assert pipeline.finish(first, at + fresh, learn=True) == pytest.approx(fresh)
    assert pipeline.finish(second, at + fresh + queued, learn=True) == pytest.approx(queued)
    return at + fresh + queued


def trained(fresh: float = 10.0, queued: float = 8.0, texts: int = 4) -> Pipeline:
    """A one-unit pipeline whose both cost models are trusted."""
    pipeline = Pipeline(units=1)
    at = 0.0
    for _ in range(MIN_SAMPLES):
        at = learn_pair(pipeline, texts, fresh, queued, at) + 1.0
    assert pipeline.in_flight == 0
    return pipeline


def test_a_call_to_a_free_unit_starts_at_once_and_the_next_waits_for_it() -> None:
    pipeline = Pipeline(units=1)
    for _ in range(MIN_SAMPLES):
        pipeline.dispatch("a", 4, 100.0)  # the unit is free: computes from 100
        pipeline.dispatch("b", 4, 101.0)  # the unit is busy: waits
        assert pipeline.finish("a", 110.0, learn=True) == 10.0
        # b computed from the moment a ended (110), not from its dispatch (101).
        assert pipeline.finish("b", 118.0, learn=True) == 8.0
    assert pipeline.fresh.estimate(4) == pytest.approx(10.0)  # a met a free unit
    assert pipeline.queued.estimate(4) == pytest.approx(8.0)  # b waited behind a


def test_a_call_dispatched_behind_a_promoted_one_waits_in_turn() -> None:
    pipeline = Pipeline(units=1)
    pipeline.dispatch("a", 1, 0.0)
    pipeline.dispatch("b", 1, 1.0)
    pipeline.dispatch("c", 1, 2.0)
    assert pipeline.finish("a", 10.0, learn=True) == 10.0
    pipeline.dispatch("d", 1, 11.0)  # b computes now: d waits too
    assert pipeline.finish("b", 15.0, learn=True) == 5.0  # b from 10
    assert pipeline.finish("c", 17.0, learn=True) == 2.0  # c from 15, first in line
    assert pipeline.finish("d", 20.0, learn=True) == 3.0  # d from 17


def test_two_units_start_two_calls_at_once() -> None:
    pipeline = Pipeline(units=2)
    for round_start in (100.0 * n for n in range(MIN_SAMPLES)):
        pipeline.dispatch("a", 2, round_start)
        pipeline.dispatch("b", 2, round_start + 0.5)  # the second unit is free: at once
        pipeline.dispatch("c", 2, round_start + 1.0)  # both busy: waits
        assert pipeline.finish("a", round_start + 6.0, learn=True) == 6.0
        assert pipeline.finish("b", round_start + 6.5, learn=True) == 6.0
        # c took the unit a freed, at round_start + 6.
        assert pipeline.finish("c", round_start + 10.0, learn=True) == 4.0
    assert pipeline.fresh.estimate(2) == pytest.approx(6.0)
    assert pipeline.queued.estimate(2) == pytest.approx(4.0)


def test_in_flight_counts_computing_and_waiting_calls() -> None:
    pipeline = Pipeline(units=1)
    assert pipeline.in_flight == 0
    pipeline.dispatch("a", 3, 0.0)
    assert pipeline.in_flight == 1
    pipeline.dispatch("b", 3, 0.1)
    assert pipeline.in_flight == 2
    pipeline.finish("a", 1.0, learn=True)
    assert pipeline.in_flight == 1
    pipeline.finish("b", 2.0, learn=False)
    assert pipeline.in_flight == 0


def test_lead_is_fresh_minus_queued_once_both_are_trusted() -> None:
    pipeline = Pipeline(units=1)
    assert pipeline.lead(8) == 0.0  # nothing known
    at = 0.0
    sizes = (2, 8, 4, 16, 1)  # varied, so each model fits fixed + per text
    for texts in sizes[: MIN_SAMPLES - 1]:
        at = learn_pair(pipeline, texts, 10.0 + 2.0 * texts, 4.0 + 1.0 * texts, at) + 1.0
    assert pipeline.lead(8) == 0.0  # not trusted yet: no lead rather than a guess
    for texts in sizes[MIN_SAMPLES - 1 :]:
        at = learn_pair(pipeline, texts, 10.0 + 2.0 * texts, 4.0 + 1.0 * texts, at) + 1.0
    # fresh(n) - queued(n) = (10 + 2n) - (4 + n) = 6 + n
    assert pipeline.lead(8) == pytest.approx(14.0)
    assert pipeline.lead(1) == pytest.approx(7.0)


def test_lead_needs_the_queued_model_too() -> None:
    pipeline = Pipeline(units=1)
    for n in range(MIN_SAMPLES + 2):  # calls one at a time: every one meets a free unit
        pipeline.dispatch(n, 4, 10.0 * n)
        pipeline.finish(n, 10.0 * n + 5.0, learn=True)
    assert pipeline.fresh.estimate(4) == pytest.approx(5.0)
    assert pipeline.queued.estimate(4) is None
    assert pipeline.lead(4) == 0.0


def test_lead_is_never_negative() -> None:
    pipeline = trained(fresh=5.0, queued=9.0)  # waiting made calls slower, not faster
    assert pipeline.lead(4) == 0.0


def test_drain_is_unknown_until_a_cost_is_known() -> None:
    pipeline = Pipeline(units=1)
    pipeline.dispatch("a", 4, 0.0)
    pipeline.dispatch("b", 4, 0.5)
    assert pipeline.drain_at(1.0) is None
    pipeline.finish("a", 10.0, learn=True)
    assert pipeline.drain_at(11.0) is None  # one sample is not trusted


def test_drain_with_one_unit_is_the_chain_of_calls_in_flight() -> None:
    pipeline = trained(fresh=10.0, queued=8.0)
    pipeline.dispatch("a", 4, 100.0)  # fresh: 10 s, ends at 110
    pipeline.dispatch("b", 4, 101.0)  # waits, then 8 s (the queued cost)
    assert pipeline.drain_at(103.0) == pytest.approx(118.0)  # 103 + 7 left + 8
    pipeline.dispatch("c", 4, 104.0)  # another 8 s behind b
    assert pipeline.drain_at(104.0) == pytest.approx(126.0)
    pipeline.finish("a", 110.0, learn=True)
    # b computes from 110 and, having waited, costs the queued 8 s: ends at 118, then c.
    assert pipeline.drain_at(112.0) == pytest.approx(126.0)
    # A call running past its estimate adds nothing (not a negative remainder).
    assert pipeline.drain_at(121.0) == pytest.approx(129.0)


def test_drain_with_two_units_shares_the_work_between_them() -> None:
    pipeline = Pipeline(units=2)
    for round_start in (100.0 * n for n in range(MIN_SAMPLES)):
        pipeline.dispatch("a", 2, round_start)
        pipeline.dispatch("b", 2, round_start)
        pipeline.dispatch("c", 2, round_start)
        pipeline.finish("a", round_start + 6.0, learn=True)
        pipeline.finish("b", round_start + 6.0, learn=True)
        pipeline.finish("c", round_start + 10.0, learn=True)
    pipeline.dispatch("a", 2, 1000.0)  # computes, fresh: 6 s
    pipeline.dispatch("b", 2, 1001.0)  # computes, fresh: 6 s
    pipeline.dispatch("c", 2, 1002.0)  # waits, then 4 s
    pipeline.dispatch("d", 2, 1002.0)  # waits, then 4 s
    # (3 + 4 + 4 + 4) s of work left on two units
    assert pipeline.drain_at(1003.0) == pytest.approx(1003.0 + 15.0 / 2)


def test_a_failed_call_teaches_nothing_but_frees_its_unit() -> None:
    pipeline = Pipeline(units=1)
    for n in range(MIN_SAMPLES + 1):
        pipeline.dispatch(("a", n), 4, 100.0 * n)
        pipeline.dispatch(("b", n), 4, 100.0 * n + 1)
        pipeline.finish(("a", n), 100.0 * n + 50.0, learn=False)
        # b was promoted when the failed call ended, at 50, not at its dispatch.
        assert pipeline.finish(("b", n), 100.0 * n + 60.0, learn=False) == 10.0
    assert pipeline.fresh.estimate(4) is None
    assert pipeline.queued.estimate(4) is None
    assert pipeline.drain_at(1000.0) == 1000.0  # nothing in flight

    pipeline = trained(fresh=10.0, queued=8.0)
    pipeline.dispatch("a", 4, 100.0)
    pipeline.dispatch("b", 4, 101.0)
    pipeline.finish("a", 190.0, learn=False)  # a slow failure: not a cost to learn
    pipeline.finish("b", 200.0, learn=False)
    assert pipeline.fresh.estimate(4) == pytest.approx(10.0)
    assert pipeline.queued.estimate(4) == pytest.approx(8.0)


def test_a_waiting_call_that_ends_frees_no_unit() -> None:
    """A call that failed while still waiting never held a unit: the next waiting call
    keeps waiting behind the one computing."""
    pipeline = Pipeline(units=1)
    pipeline.dispatch("a", 4, now=0.0)  # computes
    pipeline.dispatch("b", 4, now=0.0)  # waits
    pipeline.dispatch("c", 4, now=0.0)  # waits
    pipeline.finish("b", now=1.0, learn=False)
    # "a" still holds the only unit: "c" is timed from a's end, not from b's.
    pipeline.finish("a", now=2.0, learn=False)
    assert pipeline.finish("c", now=5.0, learn=False) == 3.0


def test_claims_overlap_only_when_a_round_trip_outlasts_a_call() -> None:
    """One claim at a time keeps just-in-time pacing exact; but when a claim's round trip
    is longer than a call, one at a time starves the GPU, so the runner lets them overlap."""
    from embedq_worker.runner import Runner
    from embedq_worker.settings import WorkerSettings

    class Backend:
        name = "b"
        concurrency = 1

    runner = Runner(WorkerSettings(), client=None, backends={"m": Backend()})  # type: ignore[arg-type, dict-item]
    assert not runner._far()  # nothing known yet
    pipeline = runner._pipeline("m", runner.backends["m"])
    for _ in range(MIN_SAMPLES):
        pipeline.dispatch("x", 10, now=0.0)
        pipeline.finish("x", now=0.040, learn=True)  # a call: 40 ms
    runner._last_size = 10
    for _ in range(3):
        runner._round_trips.observe(0.005)  # claims come back in 5 ms
    assert pipeline.cost(10) == pytest.approx(0.040)
    assert not runner._far()
    for _ in range(8):
        runner._round_trips.observe(0.070)  # the server is 70 ms away
    assert runner._far()


def test_the_claim_aims_its_texts_at_the_backend_a_margin_before_it_drains() -> None:
    """Aimed at the drain itself, half the calls arrived late and the GPU idled for the
    whole delay (bench/chain.py: 66% of ceiling(32) against 80% with the margin)."""
    pipeline = trained(fresh=10.0, queued=8.0)  # lead: 2 s
    assert CLAIM_MARGIN > 0
    idle = pipeline.claim_at(100.0, 4, round_trip=0.5)
    assert idle is not None and idle < 100.0  # nothing in flight: claim at once
    pipeline.dispatch("a", 4, 100.0)  # ends at 110
    pipeline.dispatch("b", 4, 101.0)  # then 8 s: drains at 118
    at = pipeline.claim_at(103.0, 4, round_trip=0.5)
    assert at == pytest.approx(118.0 - 2.0 - 0.5 - CLAIM_MARGIN)


def test_the_claim_time_is_unknown_until_the_costs_are() -> None:
    pipeline = Pipeline(units=1)
    pipeline.dispatch("a", 4, 0.0)
    assert pipeline.claim_at(1.0, 4, round_trip=0.5) is None
