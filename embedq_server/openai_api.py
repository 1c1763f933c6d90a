"""POST /v1/embeddings and GET /v1/models: OpenAI's contract, parsed and validated here,
then handed to the queue. Every client mistake becomes a 400 naming the field."""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from . import tokens
from .admission import admitted
from .auth import owner_of, require
from .errors import ApiError
from .keys import CLIENT_TOKENS, QUEUE, SETTINGS
from .records import Task
from .settings import Settings
from .vectors import to_floats

RETRY_AFTER_PENDING = 1  # seconds an SDK should wait before retrying a pending request
RETRY_AFTER_BUSY = 5  # seconds to wait when the queue is full
MAX_DIMENSIONS = 65_536  # beyond any real model; keeps the value inside PostgreSQL's integer
MAX_MODEL_CHARS = 256  # a model name also travels in NOTIFY payloads (8,000 bytes at most)
JSON_TYPES = ("application/json",)  # and any "+json" media type


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    inputs: list[str]
    model: str
    encoding_format: str
    dimensions: int
    wait_seconds: float
    explicit_wait: bool


def json_type(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words (for error messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def as_int(value: Any) -> int | None:
    """An integer, as JSON (and JSON Schema) count them: 3 and 3.0 alike, never true/false."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _is_int(value: Any) -> bool:
    return as_int(value) is not None


def check_text(text: str, what: str, param: str) -> None:
    """Refuse text PostgreSQL cannot store: NUL characters, and lone surrogates (JSON's
    "\\ud800" escapes decode to them, but they are not Unicode text and have no UTF-8)."""
    if "\x00" in text:
        raise ApiError(
            400,
            f"{what} contains a NUL character (\\u0000), which cannot be stored; "
            "remove it or replace it before sending",
            param=param,
            code="invalid_text",
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(
            400,
            f"{what} contains a lone surrogate ({text[exc.start]!a} at character {exc.start}), "
            "which is not valid Unicode text; send well-formed UTF-8",
            param=param,
            code="invalid_text",
        ) from None


def _token_input(ids: list[Any], position: str) -> str:
    if not ids:
        raise ApiError(400, f"input{position} is an empty token array", param="input")
    if not all(_is_int(t) for t in ids):
        raise ApiError(400, f"input{position} mixes token ids with other types", param="input")
    try:
        return tokens.decode([int(t) for t in ids])
    except tokens.UnknownToken as exc:
        raise ApiError(400, f"input{position}: {exc}", param="input") from None


def parse_inputs(raw: Any, settings: Settings) -> list[str]:
    """A string, strings, token ids, or arrays of token ids -> the texts to embed."""
    if isinstance(raw, str):
        items: list[str] = [raw]
    elif isinstance(raw, list):
        if not raw:
            raise ApiError(400, "input must not be an empty array", param="input")
        if len(raw) > settings.max_inputs:
            raise ApiError(
                400,
                f"input has {len(raw)} items; at most {settings.max_inputs} are allowed",
                param="input",
                code="too_many_inputs",
            )
        if all(isinstance(x, str) for x in raw):
            items = list(raw)
        elif all(_is_int(x) for x in raw):
            items = [_token_input(raw, "")]
        elif all(isinstance(x, list) for x in raw):
            items = [_token_input(ids, f"[{i}]") for i, ids in enumerate(raw)]
        else:
            raise ApiError(
                400,
                "input must be a string, an array of strings, an array of token ids, "
                "or an array of token-id arrays",
                param="input",
            )
    elif raw is None:
        raise ApiError(400, "input is required", param="input")
    else:
        raise ApiError(
            400,
            f"input must be a string or an array, not {json_type(raw)}",
            param="input",
        )
    total = 0
    for i, text in enumerate(items):
        if text == "":
            raise ApiError(400, f"input[{i}] is an empty string", param="input")
        if len(text) > settings.max_input_chars:
            raise ApiError(
                400,
                f"input[{i}] has {len(text)} characters; at most {settings.max_input_chars} "
                "are allowed per input",
                param="input",
                code="input_too_long",
            )
        check_text(text, f"input[{i}]", "input")
        total += len(text)
    if total > settings.max_total_chars:
        raise ApiError(
            400,
            f"the request has {total} characters in all; at most {settings.max_total_chars} "
            "are allowed",
            param="input",
            code="request_too_long",
        )
    return items


def parse_request(body: Any, settings: Settings) -> EmbeddingRequest:
    if not isinstance(body, dict):
        raise ApiError(
            400, f"the request body must be a JSON object, not {json_type(body)}", param=None
        )
    inputs = parse_inputs(body.get("input"), settings)
    model = body.get("model", settings.default_model)
    if model is None:
        model = settings.default_model
    if not isinstance(model, str) or not model.strip():
        raise ApiError(400, "model must be a non-empty string", param="model")
    if len(model) > MAX_MODEL_CHARS:
        raise ApiError(
            400, f"model must be at most {MAX_MODEL_CHARS} characters long", param="model"
        )
    check_text(model, "model", "model")
    fmt = body.get("encoding_format", "float")
    if fmt is None:
        fmt = "float"
    if fmt not in ("float", "base64"):
        raise ApiError(400, "encoding_format must be 'float' or 'base64'", param="encoding_format")
    raw_dims = body.get("dimensions")
    dims = as_int(raw_dims)
    if raw_dims is not None and (dims is None or not 1 <= dims <= MAX_DIMENSIONS):
        raise ApiError(
            400, f"dimensions must be an integer from 1 to {MAX_DIMENSIONS}", param="dimensions"
        )
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise ApiError(400, "user must be a string", param="user")
    explicit = body.get("wait_seconds") is not None  # null: the server's default
    wait = settings.default_wait
    if explicit:
        asked = as_int(body["wait_seconds"])
        if asked is None or not 0 <= asked <= settings.max_wait:
            raise ApiError(
                400,
                f"wait_seconds must be an integer from 0 to {settings.max_wait:g}",
                param="wait_seconds",
            )
        wait = asked
    return EmbeddingRequest(
        inputs=inputs,
        model=model.strip(),
        encoding_format=fmt,
        dimensions=dims or 0,
        wait_seconds=float(wait),
        explicit_wait=explicit,
    )


class _BadNumber(ValueError):
    pass


def _not_json_number(token: str) -> Any:
    raise _BadNumber(f"{token} is not a JSON number")


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):  # 1e999: beyond a double, no longer a number we can use
        raise _BadNumber(f"the number {token[:20]} is out of range")
    return value


async def read_json(request: web.Request) -> Any:
    """The body as JSON (RFC 8259: UTF-8, finite numbers), or a 4xx naming what is wrong."""
    if "Content-Type" in request.headers:  # none at all is taken as JSON
        mime = request.content_type
        if mime not in JSON_TYPES and not mime.endswith("+json"):
            raise ApiError(
                415,
                f"the request body must be JSON sent as 'Content-Type: application/json', "
                f"not {mime!r}",
                code="unsupported_media_type",
            )
    return parse_json(await request.read())


def parse_json(raw: bytes, what: str = "the request body") -> Any:
    """`raw` as JSON (RFC 8259: UTF-8, finite numbers), or a 400 naming what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"{what} is not valid UTF-8 (byte {exc.start})", param=None) from None
    try:
        return json.loads(text, parse_constant=_not_json_number, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"{what} is not valid JSON: {exc.msg} at character {exc.pos}") from None
    except RecursionError:
        raise ApiError(400, f"{what} is not valid JSON: nested too deeply") from None
    except _BadNumber as exc:  # NaN, Infinity, 1e999
        raise ApiError(400, f"{what} is not valid JSON: {exc}") from None
    except ValueError:  # Python refuses to convert integers of over 4,300 digits
        raise ApiError(400, f"{what} is not valid JSON: a number is too long") from None


def embeddings_body(task: Task, rows: Sequence[Any], encoding_format: str) -> dict[str, Any]:
    """The OpenAI response for a finished task."""
    data = []
    total_tokens = 0
    for row in rows:
        if encoding_format == "base64":
            embedding: Any = base64.b64encode(row.vector).decode("ascii")
        else:
            embedding = to_floats(row.vector)
        data.append({"object": "embedding", "index": row.index, "embedding": embedding})
        total_tokens += row.tokens
    return {
        "object": "list",
        "data": data,
        "model": task.model,
        "usage": {"prompt_tokens": total_tokens, "total_tokens": total_tokens},
    }


def failure_error(task: Task) -> ApiError:
    """How a failed task is answered: the caller's mistake as 4xx, the rest as 5xx."""
    reason = task.error or "the task failed"
    message = f"embedding task {task.id} failed: {reason}"
    if task.error_code == "input_rejected":
        return ApiError(400, message, param="input", code="input_rejected")
    if task.error_code == "model_not_found":
        return ApiError(404, message, param="model", code="model_not_found")
    return ApiError(502, message, code=task.error_code or "task_failed")


async def answer(request: web.Request, task: Task, encoding_format: str) -> web.Response:
    if task.status == "failed":
        raise failure_error(task)
    rows = task.results or ()  # Queue.read always carries them once a task completed
    # orjson: formatting 768 floats with the stdlib took 0.43 ms per vector (0.02 here).
    return web.Response(
        body=orjson.dumps(embeddings_body(task, rows, encoding_format)),
        content_type="application/json",
        headers={"X-Embedq-Task": task.id},
    )


async def create_embeddings(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    token = require(request, request.app[CLIENT_TOKENS], "client")
    req = parse_request(await read_json(request), settings)
    queue = request.app[QUEUE]
    if len(req.inputs) > settings.max_pending:  # would never fit: retrying cannot help
        raise ApiError(
            400,
            f"input has {len(req.inputs)} items; the queue holds at most "
            f"{settings.max_pending} pending inputs: split the request",
            param="input",
            code="too_many_inputs",
        )
    if await queue.pending_inputs() + len(req.inputs) > settings.max_pending:
        raise ApiError(
            429,
            "the queue is full; retry later",
            code="queue_full",
            headers={"Retry-After": str(RETRY_AFTER_BUSY)},
        )
    if settings.unserved_model == "reject" and not await queue.is_served(req.model):
        raise ApiError(
            404,
            f"no live worker serves model {req.model!r}; GET /v1/models lists those served",
            param="model",
            code="model_not_found",
        )
    started = time.monotonic()
    task = await queue.submit_and_wait(
        owner_of(token), req.model, req.dimensions, req.inputs, req.wait_seconds
    )
    if task is None:  # pruned between submit and read: only with a tiny RESULT_TTL
        raise ApiError(
            503, "the task vanished before it could be read; retry", code="task_vanished"
        )
    task_id = task.id
    if task.done:
        return await answer(request, task, req.encoding_format)
    if req.explicit_wait:
        return web.json_response(
            {"id": task_id, "object": "embedding.task", "status": task.status},
            status=202,
            headers={"Location": f"/tasks/{task_id}", "X-Embedq-Task": task_id},
        )
    # An unmodified OpenAI SDK: a retryable answer that its retry attaches to the same task
    # (identical requests by the same client share one task), never a body without data.
    waited = time.monotonic() - started
    unserved = "" if await queue.is_served(req.model) else f" (no live worker serves {req.model})"
    raise ApiError(
        503,
        f"embedding task {task_id} is still {task.status} after {waited:.0f}s{unserved}; "
        f"retry the same request to keep waiting for it, or poll GET /tasks/{task_id}",
        code="task_pending",
        headers={
            "Retry-After": str(RETRY_AFTER_PENDING),
            "X-Should-Retry": "true",
            "X-Embedq-Task": task_id,
        },
    )


async def list_models(request: web.Request) -> web.Response:
    require(request, request.app[CLIENT_TOKENS], "client")
    queue = request.app[QUEUE]
    models = await queue.live_models()
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "embedq"} for m in models
            ],
        }
    )


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/embeddings", admitted(create_embeddings))
    app.router.add_get("/v1/models", list_models)
