"""The worker channel (GET /worker/channel): a worker's claims, heartbeats, hand-backs and
results as messages on one WebSocket, answered by id with what the HTTP route would answer.
The raw frames against the real app first, then embedq-worker's ServerClient on it, falling
back to HTTP for a server without it."""

from __future__ import annotations

import asyncio
import base64
import struct
import uuid
from collections import defaultdict
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client.parser import text_string_to_metric_families

from embedq_server.app import create_app
from embedq_server.channel import CHANNELS
from embedq_server.keys import POOL, QUEUE
from embedq_worker.server_client import Rejected, ServerClient, ServerError
from embedq_worker.settings import WorkerSettings
from tests.conftest import free_port
from tests.helpers import (
    CLIENT,
    CLIENT_TOKEN,
    WORKER,
    claim,
    make_settings,
    server_client,
    wait_until,
)

GUARD = 15.0  # seconds: only stops a test whose code broke, never what a test measures
REQUESTS = "embedq_http_requests_total"
HANDSHAKE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
}


def frame(msg_id: Any, op: str, body: bytes | dict[str, Any] | None = None) -> bytes:
    head = orjson.dumps({"id": msg_id, "op": op}) + b"\n"
    if body is None:
        return head
    return head + (body if isinstance(body, bytes) else orjson.dumps(body))


def claim_body(max_items: int = 8, wait: float = 0) -> dict[str, Any]:
    return {"worker": "w1", "models": ["m"], "max_items": max_items, "wait_seconds": wait}


def results_body(lease: str, results: list[tuple[int, bytes]]) -> bytes:
    head = {
        "worker": "w1",
        "lease": lease,
        "results": [{"id": i, "bytes": len(v), "tokens": 1} for i, v in results],
    }
    return orjson.dumps(head) + b"\n" + b"".join(v for _, v in results)


class Answers:
    """The answers read from a raw channel, by id, in the order they came."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.order: list[int] = []
        self.by_id: dict[int, list[dict[str, Any]]] = defaultdict(list)

    async def read_one(self) -> dict[str, Any]:
        async with asyncio.timeout(GUARD):
            msg = await self.ws.receive()
        assert msg.type == WSMsgType.BINARY, (msg.type, msg.data)
        answer: dict[str, Any] = orjson.loads(msg.data)
        assert set(answer) == {"id", "status", "body"}, answer
        self.order.append(answer["id"])
        self.by_id[answer["id"]].append(answer)
        return answer

    async def of(self, msg_id: int) -> dict[str, Any]:
        """The next unread answer to message `msg_id`, reading on until it comes."""
        while not self.by_id.get(msg_id):
            await self.read_one()
        return self.by_id[msg_id].pop(0)


async def http_claim_until_items(client: Any) -> dict[str, Any]:
    """Claim over HTTP until something is claimable; the batch claimed."""
    got: dict[str, Any] = {}

    async def claimed() -> bool:
        got.update(await claim(client, wait=0.2, worker="w2"))
        return bool(got["items"])

    await wait_until(claimed, timeout=GUARD)
    return got


async def stored_vectors(queue: Any, task_id: str) -> list[bytes]:
    task = await queue.read(task_id)
    assert task is not None
    return [r.vector for r in task.results or ()]


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: Any) -> Samples:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    resp = await client.get("/metrics")
    assert resp.status == 200, await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


# -- the handshake -------------------------------------------------------------------------


async def test_the_channel_needs_a_worker_token(app_client):
    """A client token must never open the workers' side (it would read other people's texts)."""
    client = await app_client()
    for headers in ({}, {"Authorization": f"Bearer {CLIENT_TOKEN}"}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/worker/channel", headers=headers)
        assert refused.value.status == 401
        resp = await client.get("/worker/channel", headers={**HANDSHAKE, **headers})
        assert resp.status == 401
        error = (await resp.json())["error"]
        assert error["type"] == "authentication_error"
        assert error["code"] in ("missing_token", "invalid_token")
        assert error["message"]
    assert not client.server.app[CHANNELS]


async def test_a_plain_get_of_the_channel_is_a_400_in_the_openai_envelope(app_client):
    """A worker token but no WebSocket upgrade: a clear error, not a hang or a 500."""
    client = await app_client()
    resp = await client.get("/worker/channel", headers=WORKER)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


# -- messages ------------------------------------------------------------------------------


async def test_claim_and_results_round_trip_over_the_raw_channel(app_client):
    client = await app_client()
    queue = client.server.app[QUEUE]
    task_id, _, _ = await queue.submit("owner-1", "m", 0, ["x"])
    async with client.ws_connect("/worker/channel", headers=WORKER) as ws:
        answers = Answers(ws)
        await ws.send_bytes(frame(1, "claim", claim_body()))
        claimed = await answers.of(1)
        assert claimed["status"] == 200, claimed
        [item] = claimed["body"]["items"]
        assert item["input"] == "x" and item["model"] == "m"
        vector = struct.pack("<3f", 1.0, -2.5, 0.125)
        await ws.send_bytes(
            frame(2, "complete", results_body(claimed["body"]["lease"], [(item["id"], vector)]))
        )
        done = await answers.of(2)
    assert done["status"] == 200, done
    assert done["body"]["completed"] == [item["id"]] and done["body"]["refused"] == []
    assert await stored_vectors(queue, task_id) == [vector]


async def test_a_client_request_is_served_by_a_worker_on_the_channel(app_client):
    """The whole path: POST /v1/embeddings waits while the worker claims and posts on its
    socket, then answers with the vector the worker sent."""
    client = await app_client()
    vector = struct.pack("<4f", 0.5, 0.25, -1.0, 3.0)
    async with client.ws_connect("/worker/channel", headers=WORKER) as ws:
        answers = Answers(ws)
        await ws.send_bytes(frame(1, "claim", claim_body(wait=5)))  # long-polls for the request
        request = asyncio.create_task(
            client.post(
                "/v1/embeddings",
                json={"model": "m", "input": "hello", "encoding_format": "base64"},
                headers=CLIENT,
            )
        )
        claimed = await answers.of(1)
        assert claimed["status"] == 200, claimed
        [item] = claimed["body"]["items"]
        assert item["input"] == "hello"
        await ws.send_bytes(
            frame(2, "complete", results_body(claimed["body"]["lease"], [(item["id"], vector)]))
        )
        assert (await answers.of(2))["status"] == 200
        async with asyncio.timeout(GUARD):
            resp = await request
    assert resp.status == 200, await resp.text()
    [data] = (await resp.json())["data"]
    assert base64.b64decode(data["embedding"]) == vector


async def test_errors_come_back_by_id_and_the_channel_stays_usable(app_client):
    """A refused message is answered with the route's status and body, under its id; it
    neither closes the socket nor disturbs the messages after it."""
    client = await app_client()
    queue = client.server.app[QUEUE]
    async with client.ws_connect("/worker/channel", headers=WORKER) as ws:
        answers = Answers(ws)
        await ws.send_bytes(frame(1, "claim", claim_body(max_items=0)))
        bad_claim = await answers.of(1)
        assert bad_claim["status"] == 400
        assert "max_items must be at least 1" in bad_claim["body"]["error"]["message"]

        lease = str(uuid.uuid4())
        await ws.send_bytes(frame(2, "heartbeat", {"worker": "w1", "lease": lease}))
        lost = await answers.of(2)
        assert lost["status"] == 409 and lost["body"]["error"]["code"] == "lease_lost"

        await ws.send_bytes(frame(3, "nope", {"worker": "w1"}))
        unknown = await answers.of(3)
        assert unknown["status"] == 404 and "nope" in unknown["body"]["error"]["message"]

        await ws.send_bytes(frame(4, "claim", claim_body(wait=1)))  # long-polls
        await ws.send_bytes(frame(4, "heartbeat", {"worker": "w1", "lease": lease}))
        duplicate = await answers.of(4)
        assert duplicate["status"] == 400
        assert "message 4 is still running" in duplicate["body"]["error"]["message"]
        empty = await answers.of(4)  # the long poll itself, ending empty
        assert empty["status"] == 200 and empty["body"]["items"] == []

        await queue.submit("owner-1", "m", 0, ["after the errors"])
        await ws.send_bytes(frame(5, "claim", claim_body()))
        fine = await answers.of(5)
        assert fine["status"] == 200, fine
        assert [i["input"] for i in fine["body"]["items"]] == ["after the errors"]
        assert not ws.closed


FRAMES_NAMING_NO_MESSAGE = [
    pytest.param(b"not json at all", id="not-json"),
    pytest.param(b'{"op": "claim"}\n{}', id="no-id"),
    pytest.param(b'{"id": "1", "op": "claim"}\n{}', id="id-a-string"),
    pytest.param(b'{"id": true, "op": "claim"}\n{}', id="id-a-boolean"),
    pytest.param(b'{"id": 1.5, "op": "claim"}\n{}', id="id-a-float"),
    pytest.param(b'{"id": -1, "op": "claim"}\n{}', id="id-negative"),
    pytest.param(b'[1, "claim"]\n{}', id="head-an-array"),
]


@pytest.mark.parametrize("data", FRAMES_NAMING_NO_MESSAGE)
async def test_a_frame_naming_no_message_closes_the_channel(app_client, data):
    """It cannot be answered by id, so the worker is told by the close code instead."""
    client = await app_client()
    async with client.ws_connect("/worker/channel", headers=WORKER) as ws:
        await ws.send_bytes(data)
        async with asyncio.timeout(GUARD):
            msg = await ws.receive()
        assert msg.type == WSMsgType.CLOSE, (msg.type, msg.data)
        assert msg.data == WSCloseCode.PROTOCOL_ERROR
    assert ws.close_code == WSCloseCode.PROTOCOL_ERROR


async def test_a_text_frame_closes_the_channel(app_client):
    client = await app_client()
    async with client.ws_connect("/worker/channel", headers=WORKER) as ws:
        await ws.send_str(orjson.dumps({"id": 1, "op": "claim"}).decode() + "\n{}")
        async with asyncio.timeout(GUARD):
            msg = await ws.receive()
        assert msg.type == WSMsgType.CLOSE, (msg.type, msg.data)
        assert msg.data == WSCloseCode.PROTOCOL_ERROR


async def test_a_frame_over_the_body_limit_closes_the_channel_as_too_big(app_client):
    """MAX_BODY_BYTES bounds a message as it bounds an HTTP body."""
    client = await app_client(max_body_bytes=4096)
    async with client.ws_connect("/worker/channel", headers=WORKER) as ws:
        await ws.send_bytes(frame(1, "claim", claim_body()) + b" " * 8192)
        async with asyncio.timeout(GUARD):
            msg = await ws.receive()
        assert msg.type == WSMsgType.CLOSE, (msg.type, msg.data)
        assert msg.data == WSCloseCode.MESSAGE_TOO_BIG


async def test_answers_come_by_id_not_in_order(app_client):
    """A long-polling claim does not hold up the heartbeat sent after it."""
    client = await app_client()
    queue = client.server.app[QUEUE]
    async with client.ws_connect("/worker/channel", headers=WORKER) as ws:
        answers = Answers(ws)
        await ws.send_bytes(frame(1, "claim", claim_body(wait=5)))
        await ws.send_bytes(
            frame(2, "release", {"worker": "w1", "lease": str(uuid.uuid4()), "ids": [1]})
        )
        second = await answers.read_one()
        assert second["id"] == 2 and second["status"] == 200
        assert second["body"] == {"released": []}
        await queue.submit("owner-1", "m", 0, ["late work"])
        first = await answers.of(1)
    assert answers.order == [2, 1]
    assert first["status"] == 200
    assert [i["input"] for i in first["body"]["items"]] == ["late work"]


# -- claims nobody will read ---------------------------------------------------------------


async def test_a_cancelled_claim_loses_no_input(app_client):
    """The worker gave up on claim 1: work arriving after that goes back to pending at once
    (the lease is long, so only a hand-back frees it), and claim 1 answers empty."""
    client = await app_client(lease_seconds=600)
    queue = client.server.app[QUEUE]
    async with client.ws_connect("/worker/channel", headers=WORKER) as ws:
        answers = Answers(ws)
        await ws.send_bytes(frame(1, "claim", claim_body(wait=5)))
        await ws.send_bytes(frame(1, "cancel"))
        # Frames are taken in order: once 2 is answered, the cancel was seen.
        await ws.send_bytes(frame(2, "heartbeat", {"worker": "w1", "lease": str(uuid.uuid4())}))
        assert (await answers.of(2))["status"] == 409
        task_id, _, _ = await queue.submit("owner-1", "m", 0, ["keep me"])
        batch = await http_claim_until_items(client)
        assert [i["input"] for i in batch["items"]] == ["keep me"]
        cancelled = await answers.of(1)
        assert cancelled["status"] == 200 and cancelled["body"]["items"] == []
    task = await queue.read(task_id)
    assert task is not None and task.remaining == 1


async def test_a_cancelled_claim_stays_cancelled_when_its_id_is_reused(app_client):
    """A message reusing a running claim's id is refused with a 400; it must not undo the
    cancel of that claim (whose work would then sit leased to nobody)."""
    client = await app_client(lease_seconds=600)
    queue = client.server.app[QUEUE]
    lease = str(uuid.uuid4())
    async with client.ws_connect("/worker/channel", headers=WORKER) as ws:
        answers = Answers(ws)
        await ws.send_bytes(frame(1, "claim", claim_body(wait=5)))
        await ws.send_bytes(frame(1, "cancel"))
        await ws.send_bytes(frame(1, "heartbeat", {"worker": "w1", "lease": lease}))
        duplicate = await answers.of(1)
        await queue.submit("owner-1", "m", 0, ["keep me"])
        batch = await http_claim_until_items(client)
        assert [i["input"] for i in batch["items"]] == ["keep me"]
        cancelled = await answers.of(1)
        assert cancelled["status"] == 200 and cancelled["body"]["items"] == []
    assert "message 1 is still running" in duplicate["body"]["error"]["message"]
    assert duplicate["status"] == 400, duplicate  # an error, not a 200 with an error body


async def test_closing_the_socket_while_a_claim_long_polls_loses_nothing(app_client):
    client = await app_client(lease_seconds=600)
    queue = client.server.app[QUEUE]
    ws = await client.ws_connect("/worker/channel", headers=WORKER)
    answers = Answers(ws)
    await ws.send_bytes(frame(1, "claim", claim_body(wait=5)))
    await ws.send_bytes(frame(2, "heartbeat", {"worker": "w1", "lease": str(uuid.uuid4())}))
    assert (await answers.of(2))["status"] == 409  # the claim is running by now
    await ws.close()
    await queue.submit("owner-1", "m", 0, ["still here"])
    batch = await http_claim_until_items(client)
    assert [i["input"] for i in batch["items"]] == ["still here"]


# -- metrics and shutdown ------------------------------------------------------------------


async def test_channel_messages_are_counted_as_their_route_with_method_ws(app_client):
    client = await app_client()
    async with client.ws_connect("/worker/channel", headers=WORKER) as ws:
        answers = Answers(ws)
        await ws.send_bytes(frame(1, "claim", claim_body()))
        assert (await answers.of(1))["status"] == 200
        await ws.send_bytes(frame(2, "heartbeat", {"worker": "w1", "lease": str(uuid.uuid4())}))
        assert (await answers.of(2))["status"] == 409
    resp = await client.get("/metrics")
    text = await resp.text()
    assert (
        f'{REQUESTS}{{method="WS",route="/worker/claim",status="200"}} 1.0' in text.splitlines()
    ), text
    samples = await scrape(client)
    assert sample(samples, REQUESTS, method="WS", route="/worker/claim", status="200") == 1
    assert sample(samples, REQUESTS, method="WS", route="/worker/heartbeat", status="409") == 1
    assert sample(samples, REQUESTS, method="POST", route="/worker/claim", status="200") is None


async def test_server_shutdown_tells_the_worker_to_go_away(db_url):
    """The worker reconnects to the next server; a claim long-polling meanwhile ends (empty,
    or with the socket), never left hanging."""
    runner = web.AppRunner(create_app(make_settings(), db_url))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stopping: asyncio.Task[None] | None = None
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://127.0.0.1:{port}/worker/channel", headers=WORKER) as ws,
        ):
            answers = Answers(ws)
            await ws.send_bytes(frame(1, "claim", claim_body(wait=5)))
            lease = str(uuid.uuid4())
            await ws.send_bytes(frame(2, "heartbeat", {"worker": "w1", "lease": lease}))
            assert (await answers.of(2))["status"] == 409  # the claim is running by now
            stopping = asyncio.create_task(runner.cleanup())
            async with asyncio.timeout(GUARD):
                while (msg := await ws.receive()).type == WSMsgType.BINARY:
                    answer = orjson.loads(msg.data)
                    assert answer["id"] == 1 and answer["body"]["items"] == [], answer
            assert msg.type == WSMsgType.CLOSE, (msg.type, msg.data)
            assert msg.data == WSCloseCode.GOING_AWAY
            assert ws.close_code == WSCloseCode.GOING_AWAY
    finally:
        async with asyncio.timeout(GUARD):
            await (stopping if stopping is not None else runner.cleanup())


# -- embedq-worker's client ----------------------------------------------------------------


async def test_the_worker_client_calls_over_the_channel_by_default(app_client):
    client = await app_client()
    queue = client.server.app[QUEUE]
    task_id, _, _ = await queue.submit("owner-1", "m", 0, ["x"])
    vector = struct.pack("<2f", 0.5, 0.25)
    async with server_client(client) as server:
        batch = await server.claim(8, 0)
        assert server.on_channel
        assert len(client.server.app[CHANNELS]) == 1
        answer = await server.complete(batch.lease, [(batch.items[0].id, vector, 1)], [], None)
    assert answer["completed"] == [batch.items[0].id]
    assert await stored_vectors(queue, task_id) == [vector]
    samples = await scrape(client)
    assert sample(samples, REQUESTS, method="WS", route="/worker/claim", status="200") == 1
    assert sample(samples, REQUESTS, method="WS", route="/worker/complete", status="200") == 1
    assert sample(samples, REQUESTS, method="POST", route="/worker/claim", status="200") is None
    assert sample(samples, REQUESTS, method="POST", route="/worker/complete", status="200") is None


async def test_the_worker_client_without_the_channel_calls_over_http(app_client):
    client = await app_client()
    queue = client.server.app[QUEUE]
    task_id, _, _ = await queue.submit("owner-1", "m", 0, ["x"])
    vector = struct.pack("<2f", 0.5, 0.25)
    async with server_client(client, channel=False) as server:
        assert not server.on_channel
        batch = await server.claim(8, 0)
        assert not client.server.app[CHANNELS]
        await server.complete(batch.lease, [(batch.items[0].id, vector, 1)], [], None)
        assert not server.on_channel
    assert await stored_vectors(queue, task_id) == [vector]
    samples = await scrape(client)
    assert sample(samples, REQUESTS, method="POST", route="/worker/claim", status="200") == 1
    assert sample(samples, REQUESTS, method="POST", route="/worker/complete", status="200") == 1
    methods = {dict(labels).get("method") for name, labels in samples if name == REQUESTS}
    assert "WS" not in methods
    routes = {dict(labels).get("route") for name, labels in samples if name == REQUESTS}
    assert "/worker/channel" not in routes  # not even a handshake was tried


@pytest.mark.parametrize(
    "refusal",
    [
        pytest.param(404, id="older-server"),
        pytest.param(405, id="older-server-get-not-allowed"),
        pytest.param(400, id="proxy-passing-no-websockets"),
    ],
)
async def test_the_worker_client_falls_back_to_http_for_good_without_a_channel(
    db_url, aiohttp_client, refusal
):
    """A server (or a proxy) refuses the handshake: the call still succeeds, over HTTP, and
    the handshake is not tried again."""

    @web.middleware
    async def no_channel(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/worker/channel":
            return web.json_response({"error": {"message": "no channel"}}, status=refusal)
        return await handler(request)

    app = create_app(make_settings(), db_url)
    app.middlewares.append(no_channel)
    client = await aiohttp_client(app)
    queue = app[QUEUE]
    await queue.submit("owner-1", "m", 0, ["x", "y"])
    async with server_client(client) as server:
        assert server.on_channel  # until the server says otherwise
        first = await server.claim(1, 0)
        assert not server.on_channel
        second = await server.claim(1, 0)
        held = await server.heartbeat(second.lease)
    assert sorted(i.input for i in first.items + second.items) == ["x", "y"]
    assert held == 1
    samples = await scrape(client)
    handshakes = sample(
        samples, REQUESTS, method="GET", route="/worker/channel", status=str(refusal)
    )
    assert handshakes == 1
    assert sample(samples, REQUESTS, method="POST", route="/worker/claim", status="200") == 2
    assert sample(samples, REQUESTS, method="POST", route="/worker/heartbeat", status="200") == 1


async def test_the_worker_client_reconnects_after_the_link_drops(app_client):
    client = await app_client()
    app = client.server.app
    queue = app[QUEUE]
    async with server_client(client) as server:
        await server.claim(8, 0)
        [old] = app[CHANNELS]
        for ws in tuple(app[CHANNELS]):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"test drops the link")
        await queue.submit("owner-1", "m", 0, ["after the drop"])
        try:
            batch = await server.claim(8, 0)
        except ServerError:  # the call raced the drop: it fails once, the next one works
            batch = await server.claim(8, 0)
        assert server.on_channel
        assert len(app[CHANNELS]) == 1 and old not in app[CHANNELS]
        held = await server.heartbeat(batch.lease)
    assert [i.input for i in batch.items] == ["after the drop"]
    assert held == 1


async def test_a_claim_the_caller_gave_up_on_hands_its_inputs_back(app_client):
    """Not left leased until the lease expires (600 s here): claimable again at once."""
    client = await app_client(lease_seconds=600)
    queue = client.server.app[QUEUE]
    pool = client.server.app[POOL]

    async def claim_reached_the_server() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM embedq_worker WHERE name = 'w1'"))

    async with server_client(client) as server:
        waiting = asyncio.create_task(server.claim(8, wait=5))
        await wait_until(claim_reached_the_server, timeout=GUARD)
        assert server.on_channel and not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await queue.submit("owner-1", "m", 0, ["given up"])
        batch = await http_claim_until_items(client)
    assert [i["input"] for i in batch["items"]] == ["given up"]


@pytest.mark.parametrize("channel", [True, False], ids=["channel", "http"])
async def test_the_worker_client_with_a_wrong_token_is_rejected_for_good(app_client, channel):
    """A 401 is Rejected (retrying cannot help: the worker stops and says why), on the
    channel's handshake as on an HTTP call, never a ServerError to retry forever."""
    client = await app_client()
    async with ServerClient(
        str(client.make_url("")),
        "not-a-worker-token",
        name="w1",
        models=["m"],
        backend="test",
        channel=channel,
    ) as server:
        with pytest.raises(Rejected, match="401"):
            await server.claim(8, 0)


def test_the_worker_channel_setting():
    assert WorkerSettings.from_env({}).channel is True
    assert WorkerSettings.from_env({"WORKER_CHANNEL": "off"}).channel is False
    assert WorkerSettings.from_env({"WORKER_CHANNEL": "on"}).channel is True


async def test_an_unreadable_answer_drops_the_link_and_the_next_call_reconnects(aiohttp_client):
    """A frame the worker cannot read fails the calls waiting on that socket (instead of
    leaving them to their timeout), and the next call opens a new one."""
    handshakes: list[int] = []

    async def channel(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        handshakes.append(len(handshakes) + 1)
        async for msg in ws:
            head = orjson.loads(msg.data.partition(b"\n")[0])
            if len(handshakes) == 1:
                await ws.send_bytes(b"\xff not json")
            else:
                body = {"held": 1, "lease_seconds": 60}
                await ws.send_bytes(orjson.dumps({"id": head["id"], "status": 200, "body": body}))
        return ws

    app = web.Application()
    app.router.add_get("/worker/channel", channel)
    client = await aiohttp_client(app)
    async with server_client(client) as server:
        with pytest.raises(ServerError):
            await server.heartbeat(str(uuid.uuid4()))
        assert await server.heartbeat(str(uuid.uuid4())) == 1
        assert server.on_channel
    assert handshakes == [1, 2]
