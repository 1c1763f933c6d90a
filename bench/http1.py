"""A keep-alive HTTP/1.1 client that does only what the load generator needs: send a POST,
read the status and the body's length. It shares two cores with what it measures, so its
own CPU comes off the figures: aiohttp's client spent ~0.15 ms of CPU per request here,
this one a third of that (bench/README).

One `Connection` carries one request at a time, like a closed-loop client; it reconnects
after an answer that closes the connection or a failure. Bodies may come with a
Content-Length or chunked; anything else is a protocol error.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024  # bytes of status line and headers, at most


class ProtocolError(Exception):
    """The server's answer was not HTTP/1.1 this client understands."""


class _Answer(asyncio.Protocol):
    """Collects one response at a time; `waiter` gets (status, body length)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, int]] | None = None
        self.lost = False
        self.keep = True  # the connection may carry the next request
        self._sized: int | None = None  # the body's length once the head is read; -1: chunked
        self._status = 0
        self._start = 0  # where the body starts in `buf`

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            try:
                answer = self._parse()
            except ProtocolError as exc:
                self.waiter.set_exception(exc)
                return
            if answer is not None:
                self.waiter.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("the server closed the connection"))

    def _parse(self) -> tuple[int, int] | None:
        """(status, body length) once the whole response is in, consumed from the buffer."""
        if self._sized is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    raise ProtocolError("response head too long")
                return None
            head = bytes(self.buf[:end]).lower()
            if not head.startswith(b"http/1.") or len(head) < 12:
                raise ProtocolError(f"not an HTTP/1.x response: {head[:40]!r}")
            self._status = int(head[9:12])
            self.keep = b"\nconnection: close" not in head and head.startswith(b"http/1.1")
            self._start = end + 4
            at = head.find(b"\ncontent-length:")
            if at >= 0:
                line_end = head.find(b"\n", at + 1)
                self._sized = int(head[at + 16 : line_end if line_end > 0 else len(head)])
            elif b"\ntransfer-encoding: chunked" in head:
                self._sized = -1
            elif self._status in (204, 304) or 100 <= self._status < 200:
                self._sized = 0
            else:
                raise ProtocolError("a response without Content-Length or chunked encoding")
        if self._sized < 0:
            answer = self._chunked()
        elif len(self.buf) < self._start + self._sized:
            return None
        else:
            del self.buf[: self._start + self._sized]
            answer = self._status, self._sized
        if answer is not None:
            self._sized = None
        return answer

    def _chunked(self) -> tuple[int, int] | None:
        """(status, body length) once the last chunk and any trailers are in."""
        pos, length = self._start, 0
        while True:
            line_end = self.buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            try:
                size = int(bytes(self.buf[pos:line_end]).split(b";", 1)[0], 16)
            except ValueError as exc:
                raise ProtocolError("a bad chunk size") from exc
            if size == 0:
                trailer_end = self.buf.find(b"\r\n\r\n", line_end)  # after any trailers
                if trailer_end < 0:
                    return None
                del self.buf[: trailer_end + 4]
                return self._status, length
            if len(self.buf) < line_end + 2 + size + 2:
                return None
            length += size
            pos = line_end + 2 + size + 2


class Connection:
    """POSTs to one URL over one keep-alive connection, a request at a time."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"an http:// URL is needed, got {url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        self._proto: _Answer | None = None

    async def post(self, body: bytes) -> tuple[int, int]:
        """Send `body`; return the answer's status and body length."""
        proto = self._proto
        if proto is None or proto.lost or not proto.keep:
            self.close()
            loop = asyncio.get_running_loop()
            _, proto = await loop.create_connection(_Answer, self._host, self._port)
            self._proto = proto
        assert proto.transport is not None
        proto.waiter = asyncio.get_running_loop().create_future()
        proto.transport.write(b"%b%d\r\n\r\n%b" % (self._head, len(body), body))
        try:
            return await proto.waiter
        except BaseException:
            self.close()  # a half-read answer must not be taken for the next one's
            raise

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
