"""The load generator's HTTP/1.1 client (bench/http1.py) against a real aiohttp server: what
it reports must be what the server sent, or the benchmark's error counts and length checks
mean nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.http1 import Connection, ProtocolError

ServerFactory = Callable[..., Awaitable[TestServer]]


async def _server(aiohttp_server: ServerFactory, handler: Any) -> tuple[TestServer, list[Any]]:
    """An app answering POST /p with `handler`; the list collects each request's connection."""
    seen: list[Any] = []

    async def wrapped(request: web.Request) -> web.StreamResponse:
        seen.append(request.transport)
        return await handler(request)

    app = web.Application()
    app.router.add_post("/p", wrapped)
    return await aiohttp_server(app), seen


async def test_sized_answers_keep_one_connection(aiohttp_server: ServerFactory) -> None:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        assert request.headers["Authorization"] == "Bearer t"
        return web.Response(body=body * 3, status=200 if body != b"bad" else 422)

    server, seen = await _server(aiohttp_server, echo)
    conn = Connection(str(server.make_url("/p")), {"Authorization": "Bearer t"})
    try:
        assert await conn.post(b"abc") == (200, 9)
        assert await conn.post(b"x" * 100_000) == (200, 300_000)
        assert await conn.post(b"bad") == (422, 9)
    finally:
        conn.close()
    assert len(seen) == 3 and len(set(map(id, seen))) == 1  # one keep-alive connection


async def test_chunked_answers_are_counted_whole(aiohttp_server: ServerFactory) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for piece in (b"a" * 10, b"b" * 70_000, b"c"):
            await resp.write(piece)
        await resp.write_eof()
        return resp

    server, _ = await _server(aiohttp_server, chunked)
    conn = Connection(str(server.make_url("/p")), {})
    try:
        assert await conn.post(b"") == (200, 70_011)
        assert await conn.post(b"") == (200, 70_011)  # the connection was left clean
    finally:
        conn.close()


async def test_a_closing_answer_means_a_new_connection(aiohttp_server: ServerFactory) -> None:
    async def closing(request: web.Request) -> web.Response:
        resp = web.Response(text="ok")
        resp.force_close()
        return resp

    server, seen = await _server(aiohttp_server, closing)
    conn = Connection(str(server.make_url("/p")), {})
    try:
        assert await conn.post(b"1") == (200, 2)
        assert await conn.post(b"2") == (200, 2)
    finally:
        conn.close()
    assert len(set(map(id, seen))) == 2


async def _raw_server(*answers: bytes | None) -> tuple[asyncio.Server, str]:
    """A TCP server that reads a request on its k-th connection and sends `answers[k]` (the
    last one from then on; None: hangs up without answering)."""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        answer = answers[min(connections, len(answers) - 1)]
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        if answer is not None:
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/p"


@pytest.mark.parametrize(
    "answer",
    [b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nX: y\r\n\r\nno length", b"HTTP/1.1 200 OK\r\n"],
)
async def test_what_is_not_http_is_an_error(answer: bytes) -> None:
    server, url = await _raw_server(answer)
    conn = Connection(url, {})
    try:
        with pytest.raises((ProtocolError, ConnectionResetError)):
            await conn.post(b"{}")
    finally:
        conn.close()
        server.close()
        await server.wait_closed()


async def test_a_hang_up_is_an_oserror_and_the_next_call_reconnects() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    server, url = await _raw_server(None, ok)
    conn = Connection(url, {})
    try:
        with pytest.raises(OSError):
            await conn.post(b"{}")
        assert await conn.post(b"{}") == (200, 2)
    finally:
        conn.close()
        server.close()
        await server.wait_closed()
