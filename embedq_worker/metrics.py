"""The worker's Prometheus metrics on an optional port (METRICS_PORT; 0: off): batches and
inputs computed, backend latency, failed inputs and logged errors.

The runner reports each computed batch through its `on_batch` hook; its running totals
(`Runner.stats`) are read at scrape time; warnings and errors are counted from the log, so
every trouble the runner reports is counted without the runner knowing about metrics.
The server runs in prometheus_client's own thread, so a busy event loop never delays a
scrape (and a scrape never delays a batch).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("embedq.worker")

METRICS_ADDR_ENV = "METRICS_ADDR"  # the address the metrics port binds; default all
DEFAULT_ADDR = "0.0.0.0"  # Prometheus scrapes from elsewhere; the page shows no texts
# Backend calls: tens of milliseconds on a GPU, up to the request timeout on a cold model.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class RunnerStats(Protocol):
    """What the metrics read of `runner.Stats` (a protocol: no import of the runner)."""

    batches: int
    texts: int
    failed: int
    empty_claims: int


class _StatsCollector(Collector):
    def __init__(self, stats: RunnerStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        failed = CounterMetricFamily(
            "embedq_worker_failed_inputs",
            "Inputs reported to the server as failed (rejected, model missing, backend error).",
        )
        failed.add_metric([], self._stats.failed)
        empty = CounterMetricFamily(
            "embedq_worker_empty_claims", "Claims that came back without work."
        )
        empty.add_metric([], self._stats.empty_claims)
        yield from (failed, empty)


class _LogCounter(logging.Handler):
    def __init__(self, counter: Counter) -> None:
        super().__init__(level=logging.WARNING)
        self._counter = counter

    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= logging.ERROR else "warning"
        self._counter.labels(level).inc()


class WorkerMetrics:
    """One worker's metrics in their own registry (tests run several workers at once)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.batches = Counter(
            "embedq_worker_batches",
            "Batches computed by the backend, by model.",
            ["model"],
            registry=self.registry,
        )
        self.inputs = Counter(
            "embedq_worker_inputs",
            "Inputs in the batches computed, by model.",
            ["model"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "embedq_worker_backend_seconds",
            "Time the backend took per batch, by model (retries of an unavailable backend "
            "not included).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "embedq_worker_batch_size",
            "Inputs per computed batch, by model.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.log_events = Counter(
            "embedq_worker_log_events",
            "Warnings and errors the worker logged (backend unavailable, posts failed, ...).",
            ["level"],
            registry=self.registry,
        )
        self._log_handler = _LogCounter(self.log_events)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def on_batch(self, model: str, batch_size: int, seconds: float) -> None:
        """The runner's hook: one batch of `model` computed in `seconds`."""
        self.batches.labels(model).inc()
        self.inputs.labels(model).inc(batch_size)
        self.batch_size.labels(model).observe(batch_size)
        self.latency.labels(model).observe(max(seconds, 0.0))

    def watch(self, stats: RunnerStats) -> None:
        """Report the runner's running totals at scrape time."""
        self.registry.register(_StatsCollector(stats))

    def start(self, port: int, addr: str | None = None) -> int:
        """Serve /metrics on `port` (0: any free port); return the port. Also starts
        counting the worker's logged warnings and errors."""
        addr = addr or os.environ.get(METRICS_ADDR_ENV) or DEFAULT_ADDR
        self._server, self._thread = start_http_server(port, addr, registry=self.registry)
        logging.getLogger("embedq").addHandler(self._log_handler)
        bound = int(self._server.server_port)
        log.info("metrics listening on http://%s:%d/metrics", addr, bound)
        return bound

    def stop(self) -> None:
        logging.getLogger("embedq").removeHandler(self._log_handler)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def start(port: int) -> WorkerMetrics | None:
    """The worker's metrics serving on `port`, or None when port is 0 (metrics off)."""
    if not port:
        return None
    metrics = WorkerMetrics()
    metrics.start(port)
    return metrics
