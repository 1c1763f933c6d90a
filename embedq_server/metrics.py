"""Prometheus metrics: the queue's process-wide counters and histograms, and GET /metrics.

The queue's verbs report through the module-level functions below (`observe_claim`,
`observe_completed`, `count_outcome`); they write to metric objects held in one module
registry, because the queue has no handle on the app. Each app gets its own
`CollectorRegistry` that exposes those shared metrics plus its own (HTTP requests, and the
queue depth read from the database at scrape time), so several apps in one test process
never register a name twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

# The *_created series double the output and no dashboard of ours reads them.
disable_created_metrics()

OUTCOMES = ("completed", "failed", "requeued", "expired", "released")

# Queue waits can be long (no worker for an hour); compute is usually sub-second.
SECONDS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)  # inputs per claim

PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)
"""The metrics the queue writes to, shared by every app in this process."""

ITEMS = Counter(
    "embedq_items",
    "Inputs that left a worker's hands, by model and outcome "
    "(completed, failed, requeued, expired, released).",
    ["model", "outcome"],
    registry=PROCESS_REGISTRY,
)
QUEUE_WAIT = Histogram(
    "embedq_queue_wait_seconds",
    "Time an input waited in the queue before a worker claimed it.",
    ["model"],
    buckets=SECONDS_BUCKETS,
    registry=PROCESS_REGISTRY,
)
COMPUTE = Histogram(
    "embedq_compute_seconds",
    "Time from claim to result of a completed input.",
    ["model"],
    buckets=SECONDS_BUCKETS,
    registry=PROCESS_REGISTRY,
)
END_TO_END = Histogram(
    "embedq_end_to_end_seconds",
    "Time from submission to result of a completed input.",
    ["model"],
    buckets=SECONDS_BUCKETS,
    registry=PROCESS_REGISTRY,
)
BATCH_SIZE = Histogram(
    "embedq_batch_size",
    "Inputs per non-empty claim.",
    ["model"],
    buckets=BATCH_BUCKETS,
    registry=PROCESS_REGISTRY,
)


def observe_claim(model: str, batch_size: int) -> None:
    """A worker claimed `batch_size` inputs of `model` (call only for non-empty claims)."""
    BATCH_SIZE.labels(model).observe(batch_size)


def observe_completed(
    model: str, queue_wait: Sequence[float], compute: Sequence[float], end_to_end: Sequence[float]
) -> None:
    """Inputs of `model` completed; one duration (seconds) per input in each list.

    Also counts them as completed, so do not call count_outcome("completed") for them too.
    """
    wait_h, compute_h, e2e_h = (h.labels(model) for h in (QUEUE_WAIT, COMPUTE, END_TO_END))
    for seconds in queue_wait:
        wait_h.observe(max(seconds, 0.0))
    for seconds in compute:
        compute_h.observe(max(seconds, 0.0))
    for seconds in end_to_end:
        e2e_h.observe(max(seconds, 0.0))
    n = max(len(queue_wait), len(compute), len(end_to_end))
    if n:
        ITEMS.labels(model, "completed").inc(n)


def count_outcome(model: str, outcome: str, n: int) -> None:
    """`n` inputs of `model` ended a claim as `outcome` (one of OUTCOMES)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; expected one of {', '.join(OUTCOMES)}")
    if n > 0:
        ITEMS.labels(model, outcome).inc(n)
