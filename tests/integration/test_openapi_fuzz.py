"""Schemathesis against a running server on a real PostgreSQL: for every operation in
/openapi.json, generated valid and invalid requests never get a 5xx, and every response is
documented (status code, headers, content type, body schema).

Each operation gets its own server and database. A test worker in the server's loop
completes whatever is queued, so embeddings requests answer 200 with vectors instead of
waiting out their time.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from embedq_server import openapi
from embedq_server.app import create_app
from embedq_server.keys import POOL, QUEUE
from embedq_server.records import WorkerInfo
from tests.conftest import free_port
from tests.helpers import CLIENT, WORKER, make_settings

SETTINGS = make_settings(
    default_wait=5.0,  # the test worker answers within milliseconds
    max_wait=2,
    claim_wait=0.2,  # fuzzed claims long-poll at most this long
    backstop_interval=0.2,
)
MAX_EXAMPLES = 40  # per operation and generation mode, besides the coverage phase's cases

SPEC = openapi.build_spec(SETTINGS)
schema = schemathesis.openapi.from_dict(SPEC)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=MAX_EXAMPLES,
    deterministic=True,  # the same cases on every run: a failure here is reproducible
    database="none",
)


async def _test_worker(app: web.Application, stop: asyncio.Event) -> None:
    """Complete every pending input with a small vector, whatever its model."""
    pool, queue = app[POOL], app[QUEUE]
    me = WorkerInfo(name="fuzz-test-worker")
    while not stop.is_set():
        rows = await pool.fetch("SELECT DISTINCT model FROM embedq_item WHERE state = 'pending'")
        models = [r["model"] for r in rows]
        if models:
            batch = await queue.claim(me, models, 256, 0)
            vectors = [
                (
                    item.id,
                    struct.pack(f"<{item.dimensions or 4}f", *[0.5] * (item.dimensions or 4)),
                    1,
                )
                for item in batch.items
            ]
            if vectors:
                await queue.complete(batch.lease, vectors)
                continue
        await asyncio.sleep(0.01)


async def _serve(db_url: str, port: int, ready: threading.Event, stop: asyncio.Event) -> None:
    runner = web.AppRunner(create_app(SETTINGS, db_url))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        halt = asyncio.Event()
        worker = asyncio.create_task(_test_worker(runner.app, halt), name="test-worker")
        ready.set()
        await stop.wait()
        halt.set()
        await worker
    finally:
        await runner.cleanup()


@pytest.fixture
def live_server(db_url: str) -> Iterator[str]:
    """The server on a free port, in a thread with its own event loop (schemathesis makes
    blocking calls from the test's thread)."""
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(_serve(db_url, port, ready, stop))
        except BaseException as exc:
            errors.append(exc)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="live-server", daemon=True)
    thread.start()
    assert ready.wait(30), "the server did not start"
    assert not errors, errors
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    assert not errors, errors


def _token_for(case: Any) -> dict[str, str]:
    """The token the operation's documented security asks for, unless this case is about
    leaving it out."""
    operation = case.operation
    if operation.schema.is_security_param_negated(case):
        return {}
    security = SPEC["paths"][operation.path][operation.method.lower()]["security"]
    schemes = {name for requirement in security for name in requirement}
    if "workerToken" in schemes:
        return WORKER
    if "clientToken" in schemes:
        return CLIENT
    return {}


# The worker channel is a WebSocket: an HTTP client can only be refused its handshake
# (tests/integration/test_channel.py speaks the protocol and checks that refusal).
@schema.exclude(path="/worker/channel").parametrize()
@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_operation_conforms_and_never_fails(case: Any, live_server: str) -> None:
    case.call_and_validate(base_url=live_server, headers=_token_for(case), timeout=30)


def test_request_then_poll_sequences(live_server: str) -> None:
    """Stateful: follow the description's links from POST /v1/embeddings to the task it
    made, so GET /tasks/{id} and its result are checked on real tasks, not only on 404s."""
    base = schema.as_state_machine()

    class Sequences(base):  # type: ignore[valid-type,misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": live_server, "headers": _token_for(case), "timeout": 30}

    Sequences.run(
        settings=settings(
            max_examples=25,
            stateful_step_count=6,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )


async def test_the_served_description_is_the_built_one(app_client: Any) -> None:
    client = await app_client()
    resp = await client.get("/openapi.json")  # no token
    assert resp.status == 200
    assert resp.content_type == "application/json"
    served = await resp.json()
    assert served == openapi.build_spec(client.app[openapi.SETTINGS])
    assert served["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(served).validate()  # against the OpenAPI 3.1 meta-schema
    routes = {(method.upper(), path) for path, item in served["paths"].items() for method in item}
    registered = {
        (r.method, r.resource.canonical)
        for r in client.app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    assert routes == registered
