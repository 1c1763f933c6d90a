"""GET /tasks/{id} and /tasks/{id}/result: poll a task by the id a request handed back.

A client sees only its own tasks; anyone else's id answers 404 as if it did not exist.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from aiohttp import web

from .admission import admitted
from .auth import owner_of, require
from .errors import ApiError
from .keys import CLIENT_TOKENS, QUEUE, SETTINGS
from .openai_api import answer, embeddings_body, failure_error
from .records import Task


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def _own_task(request: web.Request) -> Task:
    token = require(request, request.app[CLIENT_TOKENS], "client")
    raw = request.match_info["task_id"]
    try:
        task_id = str(uuid.UUID(raw))
    except ValueError:
        raise ApiError(
            404, f"no task {raw[:100]}", param="task_id", code="task_not_found"
        ) from None
    task = await request.app[QUEUE].read(task_id)
    if task is None or task.owner != owner_of(token):
        raise ApiError(404, f"no task {task_id}", param="task_id", code="task_not_found")
    return task


QUERY_PARAMS = ("encoding_format", "wait_seconds")


def _format(request: web.Request) -> str:
    for name in request.query:  # a typo (?wait=5) must not be silently ignored
        if name not in QUERY_PARAMS:
            raise ApiError(
                400,
                f"unknown query parameter {name[:50]!r}; this endpoint takes "
                + " and ".join(QUERY_PARAMS),
                param=name[:50],
            )
    fmt = request.query.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise ApiError(400, "encoding_format must be 'float' or 'base64'", param="encoding_format")
    return fmt


def _wait(request: web.Request) -> float:
    raw = request.query.get("wait_seconds", "0")
    limit = request.app[SETTINGS].max_wait
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or int(raw) > limit:
        raise ApiError(
            400, f"wait_seconds must be an integer from 0 to {limit:g}", param="wait_seconds"
        )
    return float(raw)


async def _maybe_wait(request: web.Request, task: Task) -> Task:
    wait = _wait(request)
    if wait > 0 and not task.done:
        return await request.app[QUEUE].wait(task.id, wait) or task
    return task


async def get_task(request: web.Request) -> web.Response:
    task = await _own_task(request)  # the token first: a stranger learns nothing more
    fmt = _format(request)
    task = await _maybe_wait(request, task)
    queue = request.app[QUEUE]
    states = await queue.item_states(task.id)
    status = task.status
    if status == "pending" and (states["processing"] or states["completed"]):
        status = "processing"  # a worker has started on it
    body: dict[str, Any] = {
        "id": task.id,
        "object": "embedding.task",
        "status": status,
        "model": task.model,
        "dimensions": task.dimensions or None,
        "inputs": task.n_inputs,
        "counts": {k: states[k] for k in ("pending", "processing", "completed", "failed")},
        "error": None,
        "created_at": _iso(task.created_at),
        "started_at": _iso(states["started_at"]),
        "finished_at": _iso(task.finished_at),
        "result": None,
        "note": None,
    }
    if not task.done and not await queue.is_served(task.model):
        body["note"] = f"no live worker serves model {task.model}; the task waits until one does"
    if task.status == "failed":
        err = failure_error(task)
        body["error"] = {"message": err.message, "code": err.code}
    elif task.status == "completed":
        body["result"] = embeddings_body(task, task.results or (), fmt)
    return web.json_response(body)


async def get_result(request: web.Request) -> web.Response:
    task = await _own_task(request)  # the token first: a stranger learns nothing more
    fmt = _format(request)
    task = await _maybe_wait(request, task)
    if task.done:
        return await answer(request, task, fmt)
    return web.json_response(
        {"id": task.id, "object": "embedding.task", "status": task.status},
        status=202,
        headers={"Retry-After": "1"},
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/tasks/{task_id}", admitted(get_task))
    app.router.add_get("/tasks/{task_id}/result", admitted(get_result))
