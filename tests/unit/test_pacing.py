"""The worker's pacing: what a batch costs, and how long a claim's round trip takes."""

from __future__ import annotations

import pytest

from embedq_worker.pacing import CostModel, RoundTrips


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
