"""Prometheus metrics: the queue's process-wide counters and histograms, and GET /metrics.

The queue's verbs report through the module-level functions below (`observe_claim`,
`observe_completed`, `count_outcome`); they write to metric objects held in one module
registry, because the queue has no handle on the app. Each app gets its own
`CollectorRegistry` that exposes those shared metrics plus its own (HTTP requests, and the
queue depth read from the database at scrape time), so several apps in one test process
never register a name twice.
"""

from __future__ import annotations

import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .auth import presented_token
from .sql import QUERIES

# No module-level import of .keys: keys imports queue, and queue imports this module.

# The *_created series double the output and no dashboard of ours reads them.
disable_created_metrics()

OUTCOMES = ("completed", "failed", "requeued", "expired", "released", "cached")

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
    "Inputs by model and how a step ended for them: completed, failed, requeued, expired, "
    "released, cached (answered from the result cache); model * where it is not known.",
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


# -- per app: HTTP requests, the database's view of the queue, and GET /metrics -----------

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
QUEUE_STATES = ("pending", "processing")  # the gauge's states: the queue proper
SNAPSHOT_TIMEOUT = 5.0  # seconds the scrape-time query may take
METRICS_TOKEN_ENV = "METRICS_TOKEN"  # optional bearer token for /metrics; unset: token-free

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class QueueCollector(Collector):
    """Gauges read from the database once per scrape: `refresh()` runs the one query (async),
    then `collect()` (called synchronously by the exposition code) reports what it read."""

    def __init__(self, app: web.Application) -> None:
        from . import keys

        self._app = app
        self._keys = keys
        self._snapshot: asyncpg.Record | None = None

    async def refresh(self) -> None:
        try:
            self._snapshot = await self._app[self._keys.POOL].fetchrow(
                QUERIES["metrics_snapshot"], timeout=SNAPSHOT_TIMEOUT
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            self._snapshot = None  # reported as embedq_database_up 0

    def collect(self) -> Iterator[Metric]:
        app, keys = self._app, self._keys
        up = GaugeMetricFamily("embedq_database_up", "1 if the last scrape could read the queue.")
        up.add_metric([], 1 if self._snapshot is not None else 0)
        yield up
        listener = GaugeMetricFamily(
            "embedq_listener_up", "1 while the LISTEN connection is connected."
        )
        connected = keys.LISTENER in app and app[keys.LISTENER].connected
        listener.add_metric([], 1 if connected else 0)
        yield listener
        if keys.POOL in app:
            pool = app[keys.POOL]
            size, idle = pool.get_size(), pool.get_idle_size()
            conns = GaugeMetricFamily(
                "embedq_db_pool_connections", "Open pool connections by use.", labels=["state"]
            )
            conns.add_metric(["idle"], idle)
            conns.add_metric(["busy"], size - idle)
            yield conns
            limit = GaugeMetricFamily("embedq_db_pool_max", "The pool's connection limit.")
            limit.add_metric([], pool.get_max_size())
            yield limit
        if keys.ADMISSION in app:
            admission = app[keys.ADMISSION]
            held = GaugeMetricFamily(
                "embedq_requests_in_flight", "Client requests being served (MAX_IN_FLIGHT)."
            )
            held.add_metric([], admission.held)
            yield held
            most = GaugeMetricFamily(
                "embedq_requests_in_flight_max", "MAX_IN_FLIGHT: more get 503 server_busy."
            )
            most.add_metric([], admission.limit)
            yield most
        if self._snapshot is not None:
            yield from self._queue_metrics(self._snapshot)

    def _queue_metrics(self, snap: asyncpg.Record) -> Iterator[Metric]:
        rows = json.loads(snap["queue"])
        model_workers: dict[str, int] = json.loads(snap["model_workers"])
        counts: dict[tuple[str, str], int] = {(r["model"], r["state"]): r["items"] for r in rows}
        models = sorted({model for model, _ in counts} | set(model_workers))
        items = GaugeMetricFamily(
            "embedq_queue_items",
            "Inputs in the queue by model and state (pending, processing).",
            labels=["model", "state"],
        )
        oldest = GaugeMetricFamily(
            "embedq_queue_oldest_pending_seconds",
            "Age of the oldest pending input, by model (0: none pending).",
            labels=["model"],
        )
        workers = GaugeMetricFamily(
            "embedq_model_workers_live",
            "Live workers serving each model (0 with inputs queued: nobody will compute them).",
            labels=["model"],
        )
        ages = {r["model"]: r["oldest_pending_seconds"] for r in rows if r["state"] == "pending"}
        for model in models:
            for state in QUEUE_STATES:  # every state, so a drained one reads 0, not stale
                items.add_metric([model, state], counts.get((model, state), 0))
            oldest.add_metric([model], ages.get(model) or 0.0)
            workers.add_metric([model], model_workers.get(model, 0))
        live = GaugeMetricFamily("embedq_workers_live", "Workers seen within the last 60 s.")
        live.add_metric([], snap["live_workers"])
        yield from (items, oldest, workers, live)


def _route(request: web.Request) -> str:
    """The route's pattern (/tasks/{task_id}), never the raw path: bounded label values."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


class RequestCounts:
    """The request counter and durations: for HTTP requests (the middleware), and for
    messages on the worker channel (counted as their route with method WS)."""

    def __init__(self, requests: Counter, durations: Histogram) -> None:
        self._requests = requests
        self._durations = durations

    def count(self, method: str, route: str, status: int, started: float) -> None:
        self._requests.labels(method, route, str(status)).inc()
        self._durations.labels(route).observe(time.monotonic() - started)


REQUEST_COUNTS = web.AppKey("request_counts", RequestCounts)


def setup(app: web.Application, *, token: str | None = None) -> None:
    """Give `app` its registry, the request-counting middleware (outermost, so it sees the
    final status), GET /metrics and GET /ready. `token` (default: $METRICS_TOKEN) makes
    /metrics require `Authorization: Bearer <token>`; without one it is token-free, as
    Prometheus scrapers expect, and it shows counts and model names, never texts."""
    from .keys import METRICS_REGISTRY

    registry = CollectorRegistry(auto_describe=True)
    for metric in (ITEMS, QUEUE_WAIT, COMPUTE, END_TO_END, BATCH_SIZE):
        registry.register(metric)
    requests = Counter(
        "embedq_http_requests",
        "HTTP requests answered, and worker channel messages (method WS), by method, route "
        "pattern and status.",
        ["method", "route", "status"],
        registry=registry,
    )
    durations = Histogram(
        "embedq_http_request_duration_seconds",
        "Time to answer, by route pattern (long polls included).",
        ["route"],
        buckets=SECONDS_BUCKETS,
        registry=registry,
    )
    collector = QueueCollector(app)
    registry.register(collector)
    app[METRICS_REGISTRY] = registry
    counts = app[REQUEST_COUNTS] = RequestCounts(requests, durations)
    token = token if token is not None else os.environ.get(METRICS_TOKEN_ENV) or None

    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            method = request.method if request.method in _METHODS else "OTHER"
            counts.count(method, _route(request), status, started)

    async def metrics(request: web.Request) -> web.Response:
        if token is not None and not _token_ok(request, token):
            return web.Response(
                status=401, text="metrics token required\n", headers={"WWW-Authenticate": "Bearer"}
            )
        await collector.refresh()
        # The text format, or OpenMetrics when the scraper asks for it.
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(registry), headers={"Content-Type": content_type})

    app.middlewares.insert(0, count_requests)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/ready", ready)


def _token_ok(request: web.Request, token: str) -> bool:
    # aiohttp hands undecodable header bytes over as surrogates: compare them as bytes.
    presented = (presented_token(request) or "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(presented, token.encode("utf-8", "surrogateescape"))


async def ready(request: web.Request) -> web.Response:
    """Readiness for load balancers and orchestrators: 200 only while the database answers,
    the LISTEN connection is up (without it long polls only wake on the backstop timer) and
    the server is not shutting down. Token-free, like /health; reveals nothing private."""
    from .keys import LISTENER, POOL, QUEUE

    app = request.app
    try:
        await app[POOL].fetchval("SELECT 1", timeout=2)
        database = True
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        database = False
    listener = app[LISTENER].connected
    stopping = app[QUEUE].closing
    ok = database and listener and not stopping
    body = {
        "status": "ready" if ok else "unavailable",
        "database": "up" if database else "down",
        "listener": "up" if listener else "down",
        "stopping": stopping,
    }
    return web.json_response(body, status=200 if ok else 503)
