"""The metrics API the queue calls (names, labels, what each call adds), and the worker's
metrics server."""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from embedq_server import metrics
from embedq_worker import metrics as worker_metrics


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


# -- the worker's metrics ------------------------------------------------------------------


@dataclass
class FakeStats:
    batches: int = 0
    texts: int = 0
    failed: int = 0
    empty_claims: int = 0


def test_worker_metrics_serve_batches_latency_stats_and_logged_errors():
    stats = FakeStats()
    wm = worker_metrics.WorkerMetrics()
    wm.watch(stats)
    port = wm.start(0, "127.0.0.1")
    try:
        wm.on_batch("m", 16, 0.2)
        wm.on_batch("m", 4, 0.05)
        stats.failed, stats.empty_claims = 3, 7
        logging.getLogger("embedq.worker").warning("backend unavailable (test)")
        logging.getLogger("embedq.worker").error("giving up posting (test)")
        logging.getLogger("embedq.worker").info("not counted")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        wm.stop()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    m = (("model", "m"),)
    assert samples["embedq_worker_batches_total", m] == 2
    assert samples["embedq_worker_inputs_total", m] == 20
    assert samples["embedq_worker_backend_seconds_count", m] == 2
    assert samples["embedq_worker_backend_seconds_sum", m] == pytest.approx(0.25)
    assert samples["embedq_worker_batch_size_sum", m] == 20
    assert samples["embedq_worker_failed_inputs_total", ()] == 3
    assert samples["embedq_worker_empty_claims_total", ()] == 7
    assert samples["embedq_worker_log_events_total", (("level", "warning"),)] == 1
    assert samples["embedq_worker_log_events_total", (("level", "error"),)] == 1
    with pytest.raises(urllib.error.URLError):  # stopped: the port is closed
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_worker_metrics_off_when_port_is_zero():
    assert worker_metrics.start(0) is None
