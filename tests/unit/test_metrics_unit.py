"""The metrics API the queue calls: names, labels, and what each call adds."""

from __future__ import annotations

import pytest

from embedq_server import metrics


def value(name: str, **labels: str) -> float:
    found = metrics.PROCESS_REGISTRY.get_sample_value(name, labels)
    return found or 0.0


def test_observe_claim_records_batch_size_by_model():
    before = value("embedq_batch_size_count", model="unit-claim")
    before_sum = value("embedq_batch_size_sum", model="unit-claim")
    metrics.observe_claim("unit-claim", 7)
    assert value("embedq_batch_size_count", model="unit-claim") == before + 1
    assert value("embedq_batch_size_sum", model="unit-claim") == before_sum + 7
    assert value("embedq_batch_size_bucket", model="unit-claim", le="8.0") >= 1


def test_observe_completed_fills_three_histograms_and_counts_completed():
    m = "unit-done"
    done = value("embedq_items_total", model=m, outcome="completed")
    metrics.observe_completed(m, [1.0, 2.0], [0.1, 0.2], [1.1, 2.2])
    assert value("embedq_queue_wait_seconds_count", model=m) == 2
    assert value("embedq_queue_wait_seconds_sum", model=m) == pytest.approx(3.0)
    assert value("embedq_compute_seconds_sum", model=m) == pytest.approx(0.3)
    assert value("embedq_end_to_end_seconds_sum", model=m) == pytest.approx(3.3)
    assert value("embedq_items_total", model=m, outcome="completed") == done + 2


def test_negative_durations_from_clock_skew_count_as_zero():
    metrics.observe_completed("unit-skew", [-0.5], [-0.1], [0.0])
    assert value("embedq_queue_wait_seconds_sum", model="unit-skew") == 0.0
    assert value("embedq_queue_wait_seconds_bucket", model="unit-skew", le="0.005") == 1


@pytest.mark.parametrize("outcome", metrics.OUTCOMES)
def test_count_outcome_adds_n(outcome: str):
    before = value("embedq_items_total", model="unit-out", outcome=outcome)
    metrics.count_outcome("unit-out", outcome, 3)
    metrics.count_outcome("unit-out", outcome, 0)
    assert value("embedq_items_total", model="unit-out", outcome=outcome) == before + 3


def test_count_outcome_rejects_unknown_outcomes_to_keep_labels_bounded():
    with pytest.raises(ValueError, match="unknown outcome"):
        metrics.count_outcome("unit-out", "exploded", 1)
