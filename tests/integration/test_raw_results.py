"""Results posted as raw float32 (application/x-embedq-results: a JSON line, a newline, the
vectors back to back): stored byte for byte, every malformed body refused with a 400 that
says what is wrong, and embedq-worker's client sending it, or JSON to a server that
answers 415 (an older one)."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from aiohttp import web

from embedq_common.protocol import RESULTS_TYPE
from embedq_server.keys import QUEUE
from embedq_worker.server_client import ItemFailure, ServerClient
from tests.conftest import free_port
from tests.helpers import WORKER, WORKER_TOKEN, claim, server_client


def raw_body(head: dict[str, Any], vectors: list[bytes]) -> bytes:
    return json.dumps(head).encode() + b"\n" + b"".join(vectors)


async def post_raw(client: Any, body: bytes) -> tuple[int, dict[str, Any]]:
    resp = await client.post(
        "/worker/complete",
        data=body,
        headers={**WORKER, "Content-Type": RESULTS_TYPE},
    )
    return resp.status, await resp.json()


async def test_raw_results_are_stored_byte_for_byte(app_client):
    client = await app_client()
    queue = client.server.app[QUEUE]
    task_id, _, _ = await queue.submit("owner-1", "m", 0, ["one", "two"])
    batch = await claim(client)
    items = sorted(batch["items"], key=lambda i: i["input"])  # "one", "two"
    vectors = [struct.pack("<3f", 1.0, 2.0, 3.0), struct.pack("<3f", -1.5, 0.0, 7.25)]
    head = {
        "worker": "w1",
        "lease": batch["lease"],
        "results": [
            {"id": item["id"], "bytes": len(vector), "tokens": 2}
            for item, vector in zip(items, vectors, strict=True)
        ],
    }
    status, answer = await post_raw(client, raw_body(head, vectors))
    assert status == 200, answer
    assert sorted(answer["completed"]) == sorted(i["id"] for i in items)
    task = await queue.read(task_id)
    assert task is not None and task.status == "completed"
    assert [r.vector for r in task.results or ()] == vectors
    assert [r.tokens for r in task.results or ()] == [2, 2]


BAD_BODIES = [
    pytest.param(b'{"worker": "w1"}', "one line of JSON and a newline", id="no-newline"),
    pytest.param(b"{worker\n", "the results header is not valid JSON", id="header-not-json"),
    pytest.param(b"[1, 2]\n", "the results header must be a JSON object", id="header-array"),
    pytest.param(
        b'{"worker": "w1", "lease": "LEASE", "results": [{"id": 1}]}\n',
        "bytes must be a length",
        id="no-length",
    ),
    pytest.param(
        b'{"worker": "w1", "lease": "LEASE", "results": [{"id": 1, "bytes": 6}]}\n123456',
        "not float32 bytes",
        id="not-float32",
    ),
    pytest.param(
        b'{"worker": "w1", "lease": "LEASE", "results": [{"id": 1, "bytes": 8}]}\n1234',
        "the body ends inside its vector",
        id="short-body",
    ),
    pytest.param(
        b'{"worker": "w1", "lease": "LEASE", "results": [{"id": 1, "bytes": 4}]}\n12345678',
        "4 bytes after the last result's vector",
        id="trailing-bytes",
    ),
    pytest.param(
        b'{"worker": "w1", "lease": "LEASE", "results": [{"bytes": 4}]}\n1234',
        "each result needs an item id",
        id="no-id",
    ),
]


@pytest.mark.parametrize(("body", "says"), BAD_BODIES)
async def test_malformed_raw_results_are_refused_with_the_reason(app_client, body, says):
    client = await app_client()
    queue = client.server.app[QUEUE]
    task_id, _, _ = await queue.submit("owner-1", "m", 0, ["x"])
    batch = await claim(client)
    status, answer = await post_raw(client, body.replace(b"LEASE", batch["lease"].encode()))
    assert status == 400, answer
    assert says in answer["error"]["message"], answer
    task = await queue.read(task_id)
    assert task is not None and task.remaining == 1  # nothing completed from it


TRANSPORTS = pytest.mark.parametrize("channel", [True, False], ids=["channel", "http"])


@TRANSPORTS
async def test_the_worker_client_posts_raw_results(app_client, channel):
    client = await app_client()
    queue = client.server.app[QUEUE]
    task_id, _, _ = await queue.submit("owner-1", "m", 0, ["x"])
    async with server_client(client, channel=channel) as server:
        batch = await server.claim(8, 0)
        vector = struct.pack("<2f", 0.5, 0.25)
        answer = await server.complete(batch.lease, [(batch.items[0].id, vector, 1)], [], None)
    assert answer["completed"] == [batch.items[0].id]
    task = await queue.read(task_id)
    assert task is not None and [r.vector for r in task.results or ()] == [vector]


async def test_the_worker_client_falls_back_to_json_for_a_server_without_raw_results():
    seen: list[str] = []

    async def complete(request: web.Request) -> web.Response:
        seen.append(request.content_type)
        if request.content_type == RESULTS_TYPE:
            return web.json_response({"error": {"message": "JSON only"}}, status=415)
        body = await request.json()
        return web.json_response({"completed": [r["id"] for r in body["results"]]})

    app = web.Application()
    app.router.add_post("/worker/complete", complete)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with ServerClient(
            f"http://127.0.0.1:{port}", WORKER_TOKEN, name="w1", models=["m"], backend="test"
        ) as server:
            vector = struct.pack("<2f", 1.0, 2.0)
            first = await server.complete("lease-1", [(7, vector, 1)], [], None)
            second = await server.complete("lease-2", [(8, vector, 1)], [], None)
    finally:
        await runner.cleanup()
    assert first == {"completed": [7]} and second == {"completed": [8]}
    # Raw first; after the 415, JSON, and JSON straight away from then on.
    assert seen == [RESULTS_TYPE, "application/json", "application/json"]


@TRANSPORTS
async def test_a_backend_error_with_a_lone_surrogate_still_posts(app_client, channel):
    """orjson refuses lone surrogates; such a message must not cost the batch its post."""
    client = await app_client()
    queue = client.server.app[QUEUE]
    task_id, _, _ = await queue.submit("owner-1", "m", 0, ["x", "y"])
    async with server_client(client, channel=channel) as server:
        batch = await server.claim(8, 0)
        first, second = batch.items
        failure = ItemFailure(second.id, "backend said \ud800 oops", "backend_error", False)
        vector = struct.pack("<2f", 0.5, 0.25)
        answer = await server.complete(batch.lease, [(first.id, vector, 1)], [failure], None)
    assert answer["completed"] == [first.id] and answer["failed"] == [second.id]
    task = await queue.read(task_id)
    assert task is not None and task.status == "failed"
    assert "backend said" in (task.error or "") and "oops" in (task.error or "")
