"""GET /metrics (Prometheus text format) and GET /ready, in-process against a real database."""

from __future__ import annotations

import socket
import urllib.request
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from embedq_server import metrics
from embedq_server.keys import LISTENER, POOL, QUEUE
from embedq_worker import cli as worker_cli
from embedq_worker import metrics as worker_metrics
from embedq_worker.settings import WorkerSettings
from tests.conftest import free_port
from tests.helpers import CLIENT, WORKER_TOKEN
from tests.integration.test_ops_views import seed_queue, submit


async def scrape(
    client: TestClient, **kw: Any
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name, sorted labels); the parser checks the format."""
    resp = await client.get("/metrics", **kw)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples


def sample(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def test_requests_are_counted_by_route_pattern_not_raw_path(app_client):
    client = await app_client()
    seeded = await seed_queue(client)
    await client.get(f"/tasks/{seeded.pending}", headers=CLIENT)
    await client.get("/tasks/00000000-0000-0000-0000-000000000000", headers=CLIENT)
    await client.get("/no/such/path/12345")
    await client.get("/v1/models")  # no token: 401
    samples = await scrape(client)
    count = "embedq_http_requests_total"
    assert sample(samples, count, method="POST", route="/v1/embeddings", status="202") == 4
    assert sample(samples, count, method="GET", route="/tasks/{task_id}", status="200") == 1
    assert sample(samples, count, method="GET", route="/tasks/{task_id}", status="404") == 1
    assert sample(samples, count, method="GET", route="unmatched", status="404") == 1
    assert sample(samples, count, method="GET", route="/v1/models", status="401") == 1
    routes = {dict(labels).get("route") for name, labels in samples if name == count}
    assert not any(r and (seeded.pending in r or "12345" in r) for r in routes)
    assert sample(samples, "embedq_http_request_duration_seconds_count", route="/worker/claim") == 3


async def test_queue_depth_workers_and_pool_are_read_at_scrape_time(app_client):
    client = await app_client()
    await seed_queue(client)
    samples = await scrape(client)
    items = "embedq_queue_items"
    assert sample(samples, items, model="m-a", state="pending") == 3
    assert sample(samples, items, model="m-a", state="processing") == 1
    assert sample(samples, items, model="m-b", state="pending") == 0  # zero-filled
    # Stored results are not the queue: reading them meant reading every vector per scrape.
    assert sample(samples, items, model="m-b", state="failed") is None
    assert sample(samples, items, model="m-a", state="completed") is None
    assert sample(samples, "embedq_queue_oldest_pending_seconds", model="m-a") >= 0
    assert sample(samples, "embedq_queue_oldest_pending_seconds", model="m-b") == 0
    assert sample(samples, "embedq_workers_live") == 2
    assert sample(samples, "embedq_model_workers_live", model="m-a") == 1
    assert sample(samples, "embedq_database_up") == 1
    assert sample(samples, "embedq_listener_up") == 1
    pool = client.server.app[POOL]
    assert sample(samples, "embedq_db_pool_max") == pool.get_max_size()
    idle = sample(samples, "embedq_db_pool_connections", state="idle")
    busy = sample(samples, "embedq_db_pool_connections", state="busy")
    assert idle is not None and busy is not None and idle + busy >= 1


async def test_queue_metrics_from_module_functions_show_in_every_app(app_client):
    """Two apps in one process: each has its own registry, both expose the shared metrics."""
    first, second = await app_client(), await app_client()
    metrics.observe_claim("m-shared", 5)
    metrics.observe_completed("m-shared", [0.5], [0.2], [0.7])
    metrics.count_outcome("m-shared", "expired", 2)
    for client in (first, second):
        samples = await scrape(client)
        assert sample(samples, "embedq_batch_size_count", model="m-shared") >= 1
        assert sample(samples, "embedq_end_to_end_seconds_count", model="m-shared") >= 1
        assert sample(samples, "embedq_items_total", model="m-shared", outcome="expired") >= 2
        assert sample(samples, "embedq_items_total", model="m-shared", outcome="completed") >= 1


async def test_metrics_token_when_configured(app_client, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("METRICS_TOKEN", "scrape-secret")
    client = await app_client()
    resp = await client.get("/metrics")
    assert resp.status == 401
    assert (await client.get("/metrics", headers=CLIENT)).status == 401
    await scrape(client, headers={"Authorization": "Bearer scrape-secret"})


async def test_ready_needs_database_listener_and_not_stopping(
    app_client, monkeypatch: pytest.MonkeyPatch
):
    client = await app_client()
    resp = await client.get("/ready")
    assert resp.status == 200 and (await resp.json())["status"] == "ready"

    # The listener reconnects within a fraction of a second: pretend it is still down.
    listener = type(client.server.app[LISTENER])
    monkeypatch.setattr(listener, "connected", property(lambda self: False))
    resp = await client.get("/ready")
    assert resp.status == 503 and (await resp.json())["listener"] == "down"
    assert sample(await scrape(client), "embedq_listener_up") == 0


async def test_ready_is_503_while_shutting_down(app_client):
    client = await app_client()
    client.server.app[QUEUE].close()
    resp = await client.get("/ready")
    assert resp.status == 503 and (await resp.json())["stopping"] is True


async def test_database_down_is_reported_not_raised(app_client):
    client = await app_client()
    await client.server.app[POOL].close()
    resp = await client.get("/ready")
    assert resp.status == 503 and (await resp.json())["database"] == "down"
    samples = await scrape(client)
    assert sample(samples, "embedq_database_up") == 0
    assert not any(name == "embedq_queue_items" for name, _ in samples)


async def test_worker_cli_serves_metrics_on_metrics_port(app_client, monkeypatch):
    """embedq-worker with METRICS_PORT: the batches it computes show on its own /metrics."""
    client = await app_client()
    await submit(client, "zm", ["a", "b", "c"])
    started: list[worker_metrics.WorkerMetrics] = []
    scraped: list[str] = []
    real_start = worker_metrics.start

    def start(port: int) -> worker_metrics.WorkerMetrics | None:
        wm = real_start(port)
        assert wm is not None
        started.append(wm)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            scraped.append(resp.read().decode())
        return wm

    monkeypatch.setattr(worker_metrics, "start", start)
    port = free_port()
    settings = WorkerSettings(
        server_url=str(client.make_url("")).rstrip("/"),
        worker_token=WORKER_TOKEN,
        models="zm",
        backend="zero",
        name="metrics-worker",
        burst=True,
        metrics_port=port,
    )
    assert await worker_cli.amain(settings) == 0
    assert "embedq_worker_batches_total" in scraped[0]  # it served while running
    registry = started[0].registry
    assert registry.get_sample_value("embedq_worker_inputs_total", {"model": "zm"}) == 3
    assert registry.get_sample_value("embedq_worker_backend_seconds_count", {"model": "zm"}) >= 1
    assert registry.get_sample_value("embedq_worker_empty_claims_total") >= 1
    async with aiohttp.ClientSession() as session:  # stopped with the worker
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://127.0.0.1:{port}/metrics")


async def test_worker_cli_exits_2_when_the_metrics_port_is_taken(app_client):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        settings = WorkerSettings(backend="zero", models="zm", metrics_port=taken.getsockname()[1])
        assert await worker_cli.amain(settings) == 2
