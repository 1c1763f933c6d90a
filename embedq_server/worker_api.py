"""/worker/*: the HTTP side of claiming, heartbeats and results, for worker tokens only."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from embedq_common.protocol import RESULTS_TYPE

from .auth import require
from .errors import ApiError
from .keys import QUEUE, SETTINGS, WORKER_TOKENS
from .openai_api import as_int, check_text, json_type, parse_json, read_json
from .records import Failure, WorkerInfo

FAILURE_CODES = frozenset(
    {"input_rejected", "model_not_found", "backend_error", "dimensions_unsupported"}
)


MAX_ID = 2**63 - 1  # item ids are PostgreSQL bigints
MAX_TOKENS = 2**31 - 1  # token counts are PostgreSQL integers
MAX_NAME_CHARS = 200  # worker names and the other short labels a worker sends

_KINDS = {
    str: "a string",
    list: "an array",
    int: "an integer",
    dict: "an object",
    bool: "a boolean",
}


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if kind == (int, float):
        return "a number"
    return _KINDS.get(kind, "something else") if isinstance(kind, type) else "something else"


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], **kw: Any) -> Any:
    if name not in body:
        if "default" in kw:
            return kw["default"]
        raise ApiError(400, f"{name} is required", param=name)
    value = body[name]
    if kind is int and as_int(value) is not None:
        return as_int(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ApiError(
            400, f"{name} must be {_kind_name(kind)}, not {json_type(value)}", param=name
        )
    return value


def _id(value: Any) -> int | None:
    """An item id (a positive bigint), or None."""
    number = as_int(value)
    return number if number is not None and 1 <= number <= MAX_ID else None


def _storable(text: str) -> str:
    """Free text from a worker (error messages, versions), made storable by PostgreSQL:
    a backend's odd message must not cost the batch its results."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


async def _body(request: web.Request) -> tuple[dict[str, Any], WorkerInfo]:
    require(request, request.app[WORKER_TOKENS], "worker")
    return identified(await read_json(request))


def identified(body: Any, what: str = "the request body") -> tuple[dict[str, Any], WorkerInfo]:
    """The body as an object, and the worker it names."""
    if not isinstance(body, dict):
        raise ApiError(400, f"{what} must be a JSON object, not {json_type(body)}")
    name = _field(body, "worker", str)
    if not name.strip():
        raise ApiError(400, "worker must name the worker", param="worker")
    check_text(name, "worker", "worker")
    models = _field(body, "models", list, default=[])
    if not all(isinstance(m, str) and m for m in models):
        raise ApiError(400, "models must be non-empty strings", param="models")
    for m in models:
        check_text(m, "models", "models")
    info = WorkerInfo(
        name=name[:MAX_NAME_CHARS],
        version=_opt_str(body, "version"),
        models=tuple(models),
        backend=_opt_str(body, "backend"),
        host=_opt_str(body, "host"),
    )
    return body, info


def _opt_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string or null, not {json_type(value)}", param=name)
    return _storable(value[:MAX_NAME_CHARS])


def _lease(body: dict[str, Any]) -> str:
    raw = _field(body, "lease", str)
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ApiError(400, "lease is not a lease token", param="lease") from None


async def claim(request: web.Request) -> web.Response:
    body, info = await _body(request)

    def gone() -> bool:
        return request.transport is None or request.transport.is_closing()

    return web.json_response(await claim_op(request.app, body, info, gone))


async def claim_op(
    app: web.Application, body: dict[str, Any], info: WorkerInfo, gone: Callable[[], bool]
) -> dict[str, Any]:
    """A claim's answer (`gone`: the worker hung up meanwhile: hand back what it got)."""
    if not info.models:
        raise ApiError(400, "models must name at least one model", param="models")
    max_items = _field(body, "max_items", int, default=32)
    wait = _field(body, "wait_seconds", (int, float), default=0)
    settings = app[SETTINGS]
    if max_items < 1:
        raise ApiError(400, "max_items must be at least 1", param="max_items")
    if wait < 0:
        raise ApiError(400, "wait_seconds must be at least 0", param="wait_seconds")
    result = await app[QUEUE].claim(
        info, info.models, max_items, min(float(wait), settings.claim_wait), gone=gone
    )
    return {
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


async def heartbeat(request: web.Request) -> web.Response:
    body, info = await _body(request)
    return web.json_response(await heartbeat_op(request.app, body, info))


async def heartbeat_op(
    app: web.Application, body: dict[str, Any], info: WorkerInfo
) -> dict[str, Any]:
    held = await app[QUEUE].heartbeat(_lease(body), info)
    if held == 0:
        raise ApiError(409, "lease lost: it expired or its items were finished", code="lease_lost")
    return {"held": held, "lease_seconds": app[SETTINGS].lease_seconds}


def _result_entry(entry: Any, holds: str) -> tuple[int, int]:
    """A result's item id and token count; `holds` names what else it must carry."""
    if not isinstance(entry, dict):
        raise ApiError(400, "each result must be an object", param="results")
    item_id = _id(entry.get("id"))
    if item_id is None:
        raise ApiError(400, f"each result needs an item id and {holds}", param="results")
    raw_tokens = entry.get("tokens")
    tokens = 0 if raw_tokens is None else as_int(raw_tokens)
    if tokens is None:
        raise ApiError(400, f"result {item_id}: tokens must be an integer", param="results")
    if not 0 <= tokens <= MAX_TOKENS:
        raise ApiError(400, f"result {item_id}: tokens is out of range", param="results")
    return item_id, tokens


def _float32(item_id: int, vector: bytes) -> bytes:
    if not vector or len(vector) % 4:
        raise ApiError(400, f"result {item_id}: not float32 bytes", param="results")
    return vector


def _results(body: dict[str, Any]) -> list[tuple[int, bytes, int]]:
    """Results posted as JSON, each vector in base64."""
    out: list[tuple[int, bytes, int]] = []
    for entry in _field(body, "results", list, default=[]):
        holds = "its embedding (base64)"
        item_id, tokens = _result_entry(entry, holds)
        b64 = entry.get("embedding")
        if not isinstance(b64, str):
            raise ApiError(400, f"each result needs an item id and {holds}", param="results")
        try:
            vector = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(
                400, f"result {item_id}: embedding is not base64", param="results"
            ) from None
        out.append((item_id, _float32(item_id, vector), tokens))
    return out


async def _binary_body(
    request: web.Request,
) -> tuple[dict[str, Any], WorkerInfo, list[tuple[int, bytes, int]]]:
    require(request, request.app[WORKER_TOKENS], "worker")
    return raw_results(await request.read())


def raw_results(raw: bytes) -> tuple[dict[str, Any], WorkerInfo, list[tuple[int, bytes, int]]]:
    """A results body in RESULTS_TYPE (layout in embedq_common.protocol). No base64 on
    either side: a quarter fewer bytes on the GPU's uplink, and no encoding."""
    head, newline, vectors = raw.partition(b"\n")
    if not newline:
        raise ApiError(400, "a results body starts with one line of JSON and a newline")
    body, info = identified(parse_json(head, "the results header"), "the results header")
    out: list[tuple[int, bytes, int]] = []
    start = 0
    for entry in _field(body, "results", list, default=[]):
        item_id, tokens = _result_entry(entry, "the length of its vector (bytes)")
        size = as_int(entry.get("bytes"))
        if size is None or size < 0:
            raise ApiError(400, f"result {item_id}: bytes must be a length", param="results")
        vector = vectors[start : start + size]
        if len(vector) < size:
            raise ApiError(400, f"result {item_id}: the body ends inside its vector")
        out.append((item_id, _float32(item_id, vector), tokens))
        start += size
    if start != len(vectors):
        raise ApiError(
            400, f"the body holds {len(vectors) - start} bytes after the last result's vector"
        )
    return body, info, out


def _failures(body: dict[str, Any]) -> list[Failure]:
    out = []
    for entry in _field(body, "failures", list, default=[]):
        item_id = _id(entry.get("id")) if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or item_id is None:
            raise ApiError(400, "each failure needs an item id", param="failures")
        code = entry.get("code")
        if not isinstance(code, str) or code not in FAILURE_CODES:
            code = "backend_error"
        retry = entry.get("retry")
        retry = False if retry is None else retry
        if not isinstance(retry, bool):
            raise ApiError(400, f"failure {item_id}: retry must be a boolean", param="failures")
        error = entry.get("error")
        if not isinstance(error, str) or not error:
            error = "the worker could not compute it"
        out.append(Failure(id=item_id, error=_storable(error[:2000]), code=code, retry=retry))
    return out


async def complete(request: web.Request) -> web.Response:
    """Post a batch's results (and per-input failures) in one request. Results for inputs
    whose lease was lost are refused; if nothing was accepted the answer is 409."""
    if request.content_type == RESULTS_TYPE:
        body, _info, results = await _binary_body(request)
    else:
        body, _info = await _body(request)
        results = _results(body)
    status, payload = await complete_op(request.app, body, results)
    return web.json_response(payload, status=status)


async def complete_op(
    app: web.Application, body: dict[str, Any], results: list[tuple[int, bytes, int]]
) -> tuple[int, dict[str, Any]]:
    """Store posted results: (status, answer); 409 when nothing was accepted."""
    lease = _lease(body)
    failures = _failures(body)
    revision = _opt_str(body, "model_revision")
    done, failed = await app[QUEUE].complete(lease, results, failures, revision)
    refused = sorted({r[0] for r in results} - set(done) | {f.id for f in failures} - set(failed))
    payload: dict[str, Any] = {"completed": done, "failed": failed, "refused": refused}
    if refused and not done and not failed:
        return 409, {
            "error": {
                "message": "lease lost: these results arrived after the lease expired "
                "or were already posted",
                "type": "conflict_error",
                "param": "lease",
                "code": "lease_lost",
            },
            **payload,
        }
    return 200, payload


async def release(request: web.Request) -> web.Response:
    body, _info = await _body(request)
    return web.json_response(await release_op(request.app, body))


async def release_op(app: web.Application, body: dict[str, Any]) -> dict[str, Any]:
    ids = [_id(i) for i in _field(body, "ids", list)]
    valid = [i for i in ids if i is not None]
    if len(valid) < len(ids):
        raise ApiError(400, "ids must be item ids (positive integers)", param="ids")
    return {"released": await app[QUEUE].release(_lease(body), valid)}


def setup(app: web.Application) -> None:
    app.router.add_post("/worker/claim", claim)
    app.router.add_post("/worker/heartbeat", heartbeat)
    app.router.add_post("/worker/complete", complete)
    app.router.add_post("/worker/release", release)
