"""OpenAI's error envelope, and the one middleware that turns every failure into it."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .outage import DATABASE_DOWN, TaskUnreachable

log = logging.getLogger("embedq.http")


_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    """An error answered in OpenAI's envelope: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


def error_type(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(error: ApiError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": error_type(error.status),
            "param": error.param,
            "code": error.code,
        }
    }


def error_response(error: ApiError) -> web.Response:
    return web.Response(
        status=error.status,
        body=json.dumps(error_body(error)).encode(),
        content_type="application/json",
        headers=error.headers,
    )


def database_unavailable() -> ApiError:
    """PostgreSQL restarting or unreachable: a clear, retryable answer, never a 500."""
    return ApiError(
        503,
        "the database is unavailable; retry shortly",
        code="database_unavailable",
        headers={"Retry-After": "1"},
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(
            ApiError(413, f"request body too large: {exc.text}", code="request_too_large")
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        if exc.status == 404:
            message = f"no route {request.method} {request.path}"
        elif exc.status == 405 and headers:
            message = f"{request.method} is not allowed on {request.path}; use {headers['Allow']}"
        else:
            message = exc.reason
        return error_response(ApiError(exc.status, message, headers=headers))
    except HttpProcessingError as exc:  # a body that breaks HTTP's own framing
        return error_response(ApiError(400, f"malformed request: {exc.message}"))
    except TaskUnreachable as exc:
        return error_response(
            ApiError(
                503,
                f"the database became unavailable while task {exc.task_id} was waiting; it is "
                f"kept: retry the same request, or poll GET /tasks/{exc.task_id}",
                code="database_unavailable",
                headers={"Retry-After": "1", "X-Embedq-Task": exc.task_id},
            )
        )
    except Exception as exc:
        return error_response(unexpected(exc, request.method, request.path))


def unexpected(exc: Exception, method: str, path: str) -> ApiError:
    """What an error the handler did not turn into an ApiError answers, logged; call it
    in the `except` block (the traceback is logged from there)."""
    if isinstance(exc, DATABASE_DOWN):
        # PostgreSQL restarting or unreachable: a clear, retryable answer, never a 500.
        log.warning("database unavailable path=%s error=%r", path, exc)
        return database_unavailable()
    log.exception("unhandled error method=%s path=%s", method, path)
    return ApiError(500, "internal server error", code="internal_error")
