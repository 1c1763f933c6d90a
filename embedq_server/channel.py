"""GET /worker/channel: a worker's calls as messages on one WebSocket it opened.

The worker still only connects out (NAT needs no open port). On the socket its claims,
heartbeats, hand-backs and results are messages answered by id, taken by the same code as
the /worker/* routes. A message is cheaper than an HTTP request on both sides (aiohttp's
request machinery: a cold round trip here took 0.82-0.94 ms as HTTP, 0.28-0.30 ms as a
message), and an idle request's path holds one such round trip: the claim's answer and
the results' post.

Frames, all binary. Worker to server: one line of JSON `{"id": n, "op": op}`, a newline,
then what the op's route takes as its body: JSON for `claim`, `heartbeat` and `release`,
the RESULTS_TYPE layout for `complete`. `{"id": n, "op": "cancel"}` says the worker gave up
on claim n: it is answered empty, and what it had leased goes back. Server to worker:
`{"id": n, "status": s, "body": ...}`, the status and body the route would have answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from embedq_common.protocol import CHANNEL_PATH

from .auth import require
from .errors import ApiError, error_body, unexpected
from .keys import QUEUE, SETTINGS, WORKER_TOKENS
from .logs import REQUEST_ID, log_request, new_request_id
from .metrics import REQUEST_COUNTS
from .openai_api import parse_json
from .worker_api import claim_op, complete_op, heartbeat_op, identified, raw_results, release_op

log = logging.getLogger("embedq.channel")

MAX_ID = 2**53  # message ids: integers JSON carries exactly
HEARTBEAT = 30.0  # seconds between WebSocket pings: a silently dead worker is noticed
Answer = tuple[int, dict[str, Any]]

CHANNELS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("worker_channels")


class _Session:
    """One worker's channel: its messages in flight, each answered as it ends."""

    def __init__(self, app: web.Application, ws: web.WebSocketResponse) -> None:
        self.app = app
        self.ws = ws
        self.running: dict[int, asyncio.Task[None]] = {}
        self.claims: set[int] = set()  # claims running
        self.cancelled: set[int] = set()  # claims the worker gave up on

    def received(self, data: bytes) -> None:
        head, _, body = data.partition(b"\n")
        try:
            envelope = orjson.loads(head)
        except orjson.JSONDecodeError:
            envelope = None
        msg_id = envelope.get("id") if isinstance(envelope, dict) else None
        op = envelope.get("op") if isinstance(envelope, dict) else None
        if not isinstance(msg_id, int) or isinstance(msg_id, bool) or not 0 <= msg_id < MAX_ID:
            raise ApiError(400, 'a message starts with a line {"id": n, "op": op}, n an integer')
        if op == "cancel":
            if msg_id in self.claims:
                self.cancelled.add(msg_id)
            return
        if msg_id in self.running:
            self._start(msg_id, "duplicate", self._refuse(f"message {msg_id} is still running"))
        elif op in _ROUTES:
            self._start(msg_id, op, self._operate(msg_id, op, body))
        else:
            self._start(msg_id, str(op)[:40], self._refuse(f"no operation {op!r}", 404))

    def _start(self, msg_id: int, op: str, work: Awaitable[Answer]) -> None:
        task = asyncio.create_task(self._answer(msg_id, op, work), name=f"channel-{op}")
        self.running.setdefault(msg_id, task)
        if op == "claim":
            self.claims.add(msg_id)

    async def _refuse(self, message: str, status: int = 400) -> Answer:
        raise ApiError(status, message)

    async def _operate(self, msg_id: int, op: str, raw: bytes) -> Answer:
        if op == "complete":
            body, _info, results = raw_results(raw)
            return await complete_op(self.app, body, results)
        body, info = identified(parse_json(raw))
        if op == "claim":

            def gone() -> bool:
                return self.ws.closed or msg_id in self.cancelled

            return 200, await claim_op(self.app, body, info, gone)
        if op == "heartbeat":
            return 200, await heartbeat_op(self.app, body, info)
        return 200, await release_op(self.app, body)

    async def _answer(self, msg_id: int, op: str, work: Awaitable[Answer]) -> None:
        token = REQUEST_ID.set(new_request_id())
        started = time.monotonic()
        route = _ROUTES.get(op, CHANNEL_PATH)
        try:
            status, payload = await _outcome(work, route)
            if op == "claim" and msg_id in self.cancelled:  # given up on: answered empty
                status, payload = 200, await _handed_back(self.app, op, payload)
            sent = await self._send(msg_id, status, payload)
            if not sent:
                await _handed_back(self.app, op, payload)
            log_request("WS", route, status, started)
            self.app[REQUEST_COUNTS].count("WS", route, status, started)
        finally:
            if self.running.get(msg_id) is asyncio.current_task():  # not a duplicate's
                del self.running[msg_id]
                self.claims.discard(msg_id)
                self.cancelled.discard(msg_id)
            REQUEST_ID.reset(token)

    async def _send(self, msg_id: int, status: int, payload: dict[str, Any]) -> bool:
        if self.ws.closed:
            return False
        try:
            answer = orjson.dumps({"id": msg_id, "status": status, "body": payload})
            await self.ws.send_bytes(answer)
        except (ConnectionError, RuntimeError):  # the worker hung up meanwhile
            return False
        return True

    async def refused_frame(self, error: ApiError) -> None:
        """A frame that names no message cannot be answered by id: close the channel."""
        log.warning("worker channel closed: %s", error.message)
        await self.ws.close(code=WSCloseCode.PROTOCOL_ERROR, message=error.message.encode())


async def _outcome(work: Awaitable[Answer], route: str) -> Answer:
    """What the route would have answered, errors included."""
    try:
        return await work
    except ApiError as exc:
        return exc.status, error_body(exc)
    except Exception as exc:
        error = unexpected(exc, "WS", route)
        return error.status, error_body(error)


async def _handed_back(app: web.Application, op: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A claim's answer nobody will read: its inputs go back to pending now, not at the
    lease's end. Returns the empty answer."""
    items = payload.get("items") if op == "claim" else None
    if items:
        with contextlib.suppress(Exception):  # else the lease expires: nothing is lost
            await app[QUEUE].release(payload["lease"], [item["id"] for item in items])
        return {**payload, "items": []}
    return payload


async def channel(request: web.Request) -> web.WebSocketResponse:
    require(request, request.app[WORKER_TOKENS], "worker")
    ws = web.WebSocketResponse(
        max_msg_size=request.app[SETTINGS].max_body_bytes, heartbeat=HEARTBEAT, compress=False
    )
    await ws.prepare(request)
    session = _Session(request.app, ws)
    channels = request.app[CHANNELS]
    channels.add(ws)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:  # a frame over MAX_BODY_BYTES, say: aiohttp closes
                log.warning("worker channel closed: %r", ws.exception())
                break
            if msg.type != WSMsgType.BINARY:
                await session.refused_frame(ApiError(400, "worker channel frames are binary"))
                break
            try:
                session.received(msg.data)
            except ApiError as exc:
                await session.refused_frame(exc)
                break
    finally:
        channels.discard(ws)
        # Claims see the channel closed and end; results being stored are stored.
        await asyncio.gather(*session.running.values(), return_exceptions=True)
    return ws


async def _close_channels(app: web.Application) -> None:
    """Shutdown: workers are told to go away (they reconnect to the next server)."""
    channels = app[CHANNELS]
    for ws in tuple(channels):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")


_ROUTES = {op: f"/worker/{op}" for op in ("claim", "heartbeat", "release", "complete")}


def setup(app: web.Application) -> None:
    app[CHANNELS] = set()
    app.router.add_get(CHANNEL_PATH, channel)
    app.on_shutdown.append(_close_channels)
