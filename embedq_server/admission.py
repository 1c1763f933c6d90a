"""How many client requests the server serves at once (MAX_IN_FLIGHT).

A request waiting for its result holds its inputs in memory, and its vectors once they
arrive; nothing else the server keeps grows with the number of requests (held vectors
have their own budget, handed tasks their age limit). So this count is what bounds the
server's memory under load: past it a request is answered 503 at once, before its body is
read, with Retry-After, which the OpenAI SDKs retry on their own.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from aiohttp import web

from .errors import ApiError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RETRY_AFTER = 1  # seconds: requests finish or time out within MAX_WAIT, most far sooner


class Admission:
    """Client requests being served; entering past `limit` is refused."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def __enter__(self) -> None:
        if self.held >= self.limit:
            raise ApiError(
                503,
                f"the server is serving {self.limit} requests already (MAX_IN_FLIGHT); "
                "retry shortly",
                code="server_busy",
                headers={"Retry-After": str(RETRY_AFTER)},
            )
        self.held += 1

    def __exit__(self, *exc: object) -> None:
        self.held -= 1


ADMISSION = web.AppKey("admission", Admission)


def admitted(handler: Handler) -> Handler:
    """`handler`, counted against MAX_IN_FLIGHT (the client routes that may wait)."""

    @functools.wraps(handler)
    async def counted(request: web.Request) -> web.StreamResponse:
        with request.app[ADMISSION]:
            return await handler(request)

    return counted
