"""Logging: one line per event with stable key=value fields, as text or as JSON for log
shippers, and a request id on every response and every log line of that request."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
import logging
import re
import secrets
import time

from aiohttp import web

from embedq_common import logs as common_logs

from .errors import Handler

log = logging.getLogger("embedq.request")

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# Request ids: this process's random prefix and a counter (a uuid4 per request cost a
# getrandom system call and a UUID object on the hot path).
_ID_PREFIX = secrets.token_hex(4)
_ID_COUNTER = itertools.count(1)
_CLEAN_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdFilter(logging.Filter):
    """Adds the current request's id to every record logged while handling it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    common_logs.setup_logging(fmt, level, filters=(RequestIdFilter(),))


@web.middleware
async def request_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give each request an id (the caller's X-Request-Id when it is sane), return it in the
    response, and log one line when the request ends: in the next turn of the loop, after
    the answer is written (~0.09 ms a line, twice on the path of an idle request). The
    scheduled call keeps this context, so the line still carries the request id."""
    offered = request.headers.get("X-Request-Id", "")
    if offered and _CLEAN_ID.match(offered):
        request_id = offered
    else:
        request_id = new_request_id()
    token = REQUEST_ID.set(request_id)
    started = time.monotonic()
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        response.headers["X-Request-Id"] = request_id
        return response
    finally:
        status = response.status if response is not None else 500
        task = response.headers.get("X-Embedq-Task") if response is not None else None
        log_request(request.method, request.path, status, started, task)
        REQUEST_ID.reset(token)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFF:08x}"


def log_request(
    method: str, path: str, status: int, started: float, task: str | None = None
) -> None:
    """One line for a request that ended (`started`: its time.monotonic() start), logged in
    the next turn of the loop, after the answer is written. The scheduled call keeps the
    current context, so the line still carries the request id."""
    asyncio.get_running_loop().call_soon(
        functools.partial(
            log.info,
            "request method=%s path=%s status=%d ms=%.1f%s",
            method,
            path,
            status,
            (time.monotonic() - started) * 1000,
            f" task_id={task}" if task else "",
        )
    )
