"""/worker/*: the HTTP side of claiming, heartbeats and results, for worker tokens only."""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any

from aiohttp import web

from .auth import require
from .errors import ApiError
from .keys import QUEUE, SETTINGS, WORKER_TOKENS
from .openai_api import read_json
from .queue import Failure, WorkerInfo

FAILURE_CODES = frozenset(
    {"input_rejected", "model_not_found", "backend_error", "dimensions_unsupported"}
)


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], **kw: Any) -> Any:
    if name not in body:
        if "default" in kw:
            return kw["default"]
        raise ApiError(400, f"{name} is required", param=name)
    value = body[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ApiError(400, f"{name} has the wrong type", param=name)
    return value


async def _body(request: web.Request) -> tuple[dict[str, Any], WorkerInfo]:
    require(request, request.app[WORKER_TOKENS], "worker")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    name = _field(body, "worker", str)
    models = _field(body, "models", list, default=[])
    if not all(isinstance(m, str) for m in models):
        raise ApiError(400, "models must be strings", param="models")
    info = WorkerInfo(
        name=name[:200],
        version=_opt_str(body, "version"),
        models=tuple(models),
        backend=_opt_str(body, "backend"),
        host=_opt_str(body, "host"),
    )
    return body, info


def _opt_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    return value[:200] if isinstance(value, str) else None


def _lease(body: dict[str, Any]) -> str:
    raw = _field(body, "lease", str)
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ApiError(400, "lease is not a lease token", param="lease") from None


async def claim(request: web.Request) -> web.Response:
    body, info = await _body(request)
    if not info.models:
        raise ApiError(400, "models must name at least one model", param="models")
    max_items = _field(body, "max_items", int, default=32)
    wait = _field(body, "wait_seconds", (int, float), default=0)
    settings = request.app[SETTINGS]
    if max_items < 1 or wait < 0:
        raise ApiError(400, "max_items must be >= 1 and wait_seconds >= 0")
    result = await request.app[QUEUE].claim(
        info, info.models, max_items, min(float(wait), settings.claim_wait)
    )
    return web.json_response(
        {
            "lease": result.lease,
            "lease_seconds": settings.lease_seconds,
            "items": [
                {
                    "id": item.id,
                    "input": item.input,
                    "model": item.model,
                    "dimensions": item.dimensions or None,
                    "attempts": item.attempts,
                }
                for item in result.items
            ],
        }
    )


async def heartbeat(request: web.Request) -> web.Response:
    body, info = await _body(request)
    held = await request.app[QUEUE].heartbeat(_lease(body), info)
    if held == 0:
        raise ApiError(409, "lease lost: it expired or its items were finished", code="lease_lost")
    return web.json_response({"held": held, "lease_seconds": request.app[SETTINGS].lease_seconds})


def _results(body: dict[str, Any]) -> list[tuple[int, bytes, int]]:
    out = []
    for entry in _field(body, "results", list, default=[]):
        if not isinstance(entry, dict):
            raise ApiError(400, "each result must be an object", param="results")
        item_id, b64, tokens = entry.get("id"), entry.get("embedding"), entry.get("tokens", 0)
        if not isinstance(item_id, int) or not isinstance(b64, str) or not isinstance(tokens, int):
            raise ApiError(400, "a result needs id, embedding (base64) and tokens", param="results")
        try:
            vector = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"result {item_id}: embedding is not base64", param="results") from None
        if not vector or len(vector) % 4:
            raise ApiError(400, f"result {item_id}: not float32 bytes", param="results")
        out.append((item_id, vector, tokens))
    return out


def _failures(body: dict[str, Any]) -> list[Failure]:
    out = []
    for entry in _field(body, "failures", list, default=[]):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int):
            raise ApiError(400, "each failure needs an id", param="failures")
        code = entry.get("code", "backend_error")
        if code not in FAILURE_CODES:
            code = "backend_error"
        out.append(
            Failure(
                id=entry["id"],
                error=str(entry.get("error") or "the worker could not compute it")[:2000],
                code=code,
                retry=bool(entry.get("retry", False)),
            )
        )
    return out


async def complete(request: web.Request) -> web.Response:
    """Post a batch's results (and per-input failures) in one request. Results for inputs
    whose lease was lost are refused; if nothing was accepted the answer is 409."""
    body, _info = await _body(request)
    lease = _lease(body)
    results, failures = _results(body), _failures(body)
    revision = _opt_str(body, "model_revision")
    done, failed = await request.app[QUEUE].complete(lease, results, failures, revision)
    refused = sorted({r[0] for r in results} - set(done) | {f.id for f in failures} - set(failed))
    payload = {"completed": done, "failed": failed, "refused": refused}
    if refused and not done and not failed:
        return web.json_response(
            {
                "error": {
                    "message": "lease lost: these results arrived after the lease expired "
                    "or were already posted",
                    "type": "conflict_error",
                    "param": "lease",
                    "code": "lease_lost",
                },
                **payload,
            },
            status=409,
        )
    return web.json_response(payload)


async def release(request: web.Request) -> web.Response:
    body, _info = await _body(request)
    ids = _field(body, "ids", list)
    if not all(isinstance(i, int) for i in ids):
        raise ApiError(400, "ids must be integers", param="ids")
    released = await request.app[QUEUE].release(_lease(body), ids)
    return web.json_response({"released": released})


def setup(app: web.Application) -> None:
    app.router.add_post("/worker/claim", claim)
    app.router.add_post("/worker/heartbeat", heartbeat)
    app.router.add_post("/worker/complete", complete)
    app.router.add_post("/worker/release", release)
