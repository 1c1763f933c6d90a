"""The worker's calls to the server as messages on one WebSocket it opens (the server side
and the frames: embedq_server/channel.py).

An HTTP request costs aiohttp's client and server more than a message on an open socket
(a cold round trip here: 0.82-0.94 ms against 0.28-0.30 ms), and an idle request waits for
two of the worker's calls: the claim's answer and the results' post. The socket is opened
on the first call and again after it drops; a server whose handshake is refused (an older
one answers 404, a proxy that passes no WebSockets 400) is called over HTTP from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

log = logging.getLogger("embedq.worker.channel")

HEARTBEAT = 30.0  # seconds between pings: a dead link fails the calls on it


class ChannelUnsupported(Exception):
    """The server has no worker channel: use its HTTP routes."""


class ChannelClosed(ConnectionError):
    """The socket dropped with the call unanswered: whether it ran is unknown."""


class Channel:
    """Calls by id on one socket, opened on demand; `release` takes a claim's answer that
    came after its caller gave up (its inputs are handed back, not left leased)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        release: Callable[[dict[str, Any]], bytes],
    ) -> None:
        self._session = session
        self._url = url
        self._release_body = release
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[tuple[int, Any]]] = {}
        self._given_up: set[int] = set()  # claims whose caller left: release what they bring
        self._background: set[asyncio.Future[None]] = set()

    async def call(self, op: str, body: bytes, timeout: float) -> tuple[int, Any]:
        """(status, JSON answer) of one operation, as its HTTP route would answer it."""
        async with asyncio.timeout(timeout):
            ws = await self._open()
        msg_id = next(self._ids)
        answer: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = answer
        try:
            if not self._reading():  # nothing would answer it
                raise ChannelClosed("worker channel closed")
            async with asyncio.timeout(timeout):
                await ws.send_bytes(orjson.dumps({"id": msg_id, "op": op}) + b"\n" + body)
                return await asyncio.shield(answer)
        except BaseException:
            if op == "claim":
                self._left(msg_id, answer)
            raise
        finally:
            self._waiting.pop(msg_id, None)

    async def _open(self) -> aiohttp.ClientWebSocketResponse:
        async with self._connecting:
            if self._ws is not None and not self._ws.closed and self._reading():
                return self._ws
            if self._ws is not None:  # its reader stopped: not to be trusted
                await self._ws.close()
            try:
                ws = await self._session.ws_connect(
                    self._url,
                    heartbeat=HEARTBEAT,
                    compress=0,
                    max_msg_size=0,  # claims of many long texts: the server bounds them
                    timeout=aiohttp.ClientWSTimeout(ws_close=10.0),
                )
            except aiohttp.WSServerHandshakeError as exc:
                # Refused for good (an older server, a proxy that passes no WebSockets, a
                # token the HTTP routes will refuse clearly): those are called over HTTP.
                if exc.status < 500 and exc.status != 429:
                    raise ChannelUnsupported(f"{self._url}: HTTP {exc.status}") from exc
                raise
            self._ws = ws
            self._reader = asyncio.create_task(self._read(ws), name="channel-reader")
            log.info("worker channel open url=%s", self._url)
            return ws

    def _reading(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self._answered(orjson.loads(msg.data))
        except Exception as exc:  # a frame we cannot read: the link is not to be trusted
            log.warning("worker channel dropped error=%r", exc)
            await ws.close()
        finally:
            reason = f"worker channel closed (code {ws.close_code})"
            for msg_id, waiting in list(self._waiting.items()):
                if not waiting.done():
                    waiting.set_exception(ChannelClosed(reason))
                self._waiting.pop(msg_id, None)
            self._given_up.clear()  # the server hands those back itself once it sees the close

    def _answered(self, answer: dict[str, Any]) -> None:
        msg_id, status, body = answer["id"], answer["status"], answer["body"]
        waiting = self._waiting.pop(msg_id, None)
        if waiting is not None and not waiting.done():
            waiting.set_result((status, body))
        elif msg_id in self._given_up:
            self._given_up.discard(msg_id)
            if status == 200 and body.get("items"):
                self._spawn(self._hand_back(body))

    def _left(self, msg_id: int, answer: asyncio.Future[tuple[int, Any]]) -> None:
        """The caller left claim `msg_id` (cancelled, timed out): what it got goes back. If
        its answer is here, from here; else the server is told (it hands back what the
        claim gets), and an answer already on its way is handed back when it comes."""
        if answer.done():
            if not answer.cancelled() and answer.exception() is None:
                status, body = answer.result()
                if status == 200 and body.get("items"):
                    self._spawn(self._hand_back(body))
            return
        self._given_up.add(msg_id)
        ws = self._ws
        if ws is not None and not ws.closed:
            cancel = orjson.dumps({"id": msg_id, "op": "cancel"}) + b"\n"
            self._spawn(ws.send_bytes(cancel))

    async def _hand_back(self, claimed: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # else the lease expires: nothing is lost
            status, _ = await self.call("release", self._release_body(claimed), 15.0)
            log.info("handed back a claim answered after it was given up status=%d", status)

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Future[None] = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(list(self._background), timeout=5.0)
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
