"""The OpenAPI 3.1 description of every route, served token-free at GET /openapi.json.

Built from the running server's settings, so the limits it states (inputs per request,
characters per input, the longest wait) are the ones this server enforces.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .keys import SETTINGS
from .openai_api import MAX_DIMENSIONS, MAX_MODEL_CHARS
from .settings import Settings
from .worker_api import FAILURE_CODES, MAX_ID, MAX_NAME_CHARS, MAX_TOKENS

VERSION = "0.1.0"
CL100K_LAST_ID = 100276  # the highest cl100k_base token id (a special token)
CL100K_GAPS = [100256, *range(100261, 100276)]  # ids below it that are not in the vocabulary
STORABLE = "^[^\\u0000]*$"  # PostgreSQL text cannot hold NUL characters
# Python's str.strip() whitespace, spelled out: regex dialects disagree on what \s matches.
_SPACE = (
    "\\t\\n\\u000b\\f\\r\\u001c-\\u001f \\u0085\\u00a0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000"
)
NOT_BLANK = f"^[^\\u0000]*[^\\u0000{_SPACE}][^\\u0000]*$"  # some non-space, and no NUL

# Standard base64 of a non-empty whole number of float32s (4n bytes): 16 characters carry
# 12 bytes; a tail of 4 bytes is 6 characters and "==", of 8 bytes 11 characters and "=".
FLOAT32_BASE64 = (
    "^(?:[A-Za-z0-9+/]{16})*(?:[A-Za-z0-9+/]{16}|[A-Za-z0-9+/]{6}==|[A-Za-z0-9+/]{11}=)$"
)

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(properties: Schema, required: list[str] | None = None, **extra: Any) -> Schema:
    out: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        out["required"] = required
    return out


def _json(schema: Schema, description: str, headers: Schema | None = None) -> Schema:
    out: Schema = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _task_links(task_id: str) -> Schema:
    """Where a task id found in a response (`task_id`, a runtime expression) leads."""
    return {
        name: {"operationId": operation, "parameters": {"task_id": task_id}}
        for name, operation in (("GetTask", "getTask"), ("GetTaskResult", "getTaskResult"))
    }


def _header(description: str, schema: Schema | None = None) -> Schema:
    return {"description": description, "schema": schema or {"type": "string"}}


def _responses(*names: str, **ok: Schema) -> Schema:
    """Success responses given by status, then shared error responses by name."""
    out = {status.removeprefix("s"): response for status, response in ok.items()}
    for name in names:
        out[_ERROR_STATUS[name]] = {"$ref": f"#/components/responses/{name}"}
    return out


_ERROR_STATUS = {
    "BadRequest": "400",
    "Unauthorized": "401",
    "NotFound": "404",
    "Conflict": "409",
    "PayloadTooLarge": "413",
    "UnsupportedMediaType": "415",
    "TooManyRequests": "429",
    "InternalError": "500",
    "BadGateway": "502",
    "Unavailable": "503",
}


def _schemas(settings: Settings) -> Schema:
    max_inputs = min(settings.max_inputs, settings.max_pending)  # more never fits
    max_chars = settings.max_input_chars
    max_wait = int(settings.max_wait)
    text_input = {"type": "string", "minLength": 1, "maxLength": max_chars, "pattern": STORABLE}
    token_id = {
        "type": "integer",
        "minimum": 0,
        "maximum": CL100K_LAST_ID,
        "not": {"enum": CL100K_GAPS},
        "description": "a cl100k_base token id",
    }
    token_array = {"type": "array", "items": token_id, "minItems": 1}
    embedding = _obj(
        {
            "object": {"const": "embedding"},
            "index": {"type": "integer", "minimum": 0, "description": "position of the input"},
            "embedding": {
                "oneOf": [
                    {"type": "array", "items": {"type": "number"}},
                    {
                        "type": "string",
                        "contentEncoding": "base64",
                        "description": "little-endian float32 bytes, base64-encoded",
                    },
                ]
            },
        },
        ["object", "index", "embedding"],
    )
    uuid = {"type": "string", "format": "uuid"}
    item_id = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
    timestamp = {"type": "string", "format": "date-time"}
    return {
        "Error": _obj(
            {
                "error": _obj(
                    {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": ["string", "null"]},
                    },
                    ["message", "type", "param", "code"],
                )
            },
            ["error"],
        ),
        "EmbeddingRequest": _obj(
            {
                "input": {
                    "description": "A string, an array of strings, an array of cl100k_base "
                    "token ids (one input), or an array of token-id arrays (what LangChain "
                    "sends). A text may hold no NUL character.",
                    "anyOf": [
                        text_input,
                        {
                            "type": "array",
                            "items": text_input,
                            "minItems": 1,
                            "maxItems": max_inputs,
                        },
                        {**token_array, "maxItems": max_inputs},
                        {
                            "type": "array",
                            "items": token_array,
                            "minItems": 1,
                            "maxItems": max_inputs,
                        },
                    ],
                },
                "model": _nullable(
                    {"type": "string", "maxLength": MAX_MODEL_CHARS, "pattern": NOT_BLANK}
                )
                | {"description": f"default: {settings.default_model}"},
                "encoding_format": _nullable({"enum": ["float", "base64"]})
                | {"description": "default: float"},
                "dimensions": _nullable(
                    {"type": "integer", "minimum": 1, "maximum": MAX_DIMENSIONS}
                ),
                "user": _nullable({"type": "string"}),
                "wait_seconds": _nullable({"type": "integer", "minimum": 0, "maximum": max_wait})
                | {
                    "description": "embedq's extension: seconds to wait for the vectors; "
                    "if they are not ready by then the answer is 202 with a task id to poll. "
                    f"Without it the server waits {settings.default_wait:g} s and then answers "
                    "a retryable 503 (an identical retry attaches to the same task)."
                },
            },
            ["input"],
            description=f"Limits: at most {settings.max_total_chars} characters in all.",
        ),
        "Embedding": embedding,
        "EmbeddingList": _obj(
            {
                "object": {"const": "list"},
                "data": {"type": "array", "items": _ref("Embedding")},
                "model": {"type": "string"},
                "usage": _obj(
                    {
                        "prompt_tokens": {"type": "integer", "minimum": 0},
                        "total_tokens": {"type": "integer", "minimum": 0},
                    },
                    ["prompt_tokens", "total_tokens"],
                ),
            },
            ["object", "data", "model", "usage"],
        ),
        "TaskAccepted": _obj(
            {
                "id": uuid,
                "object": {"const": "embedding.task"},
                "status": {"enum": ["pending", "processing"]},
            },
            ["id", "object", "status"],
        ),
        "Task": _obj(
            {
                "id": uuid,
                "object": {"const": "embedding.task"},
                "status": {"enum": ["pending", "processing", "completed", "failed"]},
                "model": {"type": "string"},
                "dimensions": {"type": ["integer", "null"]},
                "inputs": {"type": "integer", "minimum": 1},
                "counts": _obj(
                    {
                        state: {"type": "integer", "minimum": 0}
                        for state in ("pending", "processing", "completed", "failed")
                    },
                    ["pending", "processing", "completed", "failed"],
                ),
                "error": _nullable(
                    _obj(
                        {"message": {"type": "string"}, "code": {"type": ["string", "null"]}},
                        ["message", "code"],
                    )
                ),
                "created_at": timestamp,
                "started_at": _nullable(timestamp),
                "finished_at": _nullable(timestamp),
                "result": _nullable(_ref("EmbeddingList")),
                "note": {"type": ["string", "null"]},
            },
            [
                "id",
                "object",
                "status",
                "model",
                "dimensions",
                "inputs",
                "counts",
                "error",
                "created_at",
                "started_at",
                "finished_at",
                "result",
                "note",
            ],
        ),
        "ModelList": _obj(
            {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": _obj(
                        {
                            "id": {"type": "string"},
                            "object": {"const": "model"},
                            "created": {"type": "integer"},
                            "owned_by": {"type": "string"},
                        },
                        ["id", "object", "created", "owned_by"],
                    ),
                },
            },
            ["object", "data"],
        ),
        "Health": _obj(
            {
                "status": {"enum": ["ok", "unavailable"]},
                "database": {"enum": ["up", "down"]},
                "listener": {"enum": ["up", "down"]},
            },
            ["status", "database", "listener"],
        ),
        "Ready": _obj(
            {
                "status": {"enum": ["ready", "unavailable"]},
                "database": {"enum": ["up", "down"]},
                "listener": {"enum": ["up", "down"]},
                "stopping": {"type": "boolean"},
            },
            ["status", "database", "listener", "stopping"],
        ),
        "WorkerIdentity": _obj(
            {
                "worker": {"type": "string", "pattern": NOT_BLANK, "description": "its name"},
                "models": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1, "pattern": STORABLE},
                },
                "version": {"type": ["string", "null"]},
                "backend": {"type": ["string", "null"]},
                "host": {"type": ["string", "null"]},
            },
            ["worker"],
            description=f"Who is calling; names and labels are cut to {MAX_NAME_CHARS} characters.",
        ),
        "ClaimRequest": {
            "allOf": [
                _ref("WorkerIdentity"),
                _obj(
                    {
                        "models": {"minItems": 1},
                        "max_items": {
                            "type": "integer",
                            "minimum": 1,
                            "description": f"at most {settings.max_batch} are given",
                        },
                        "wait_seconds": {
                            "type": "number",
                            "minimum": 0,
                            "description": f"at most {settings.claim_wait:g} s is waited",
                        },
                    },
                    ["models"],
                ),
            ]
        },
        "Claim": _obj(
            {
                "lease": uuid,
                "lease_seconds": {"type": "number"},
                "items": {
                    "type": "array",
                    "items": _obj(
                        {
                            "id": item_id,
                            "input": {"type": "string"},
                            "model": {"type": "string"},
                            "dimensions": {"type": ["integer", "null"]},
                            "attempts": {"type": "integer", "minimum": 1},
                        },
                        ["id", "input", "model", "dimensions", "attempts"],
                    ),
                },
            },
            ["lease", "lease_seconds", "items"],
        ),
        "LeaseRequest": {
            "allOf": [_ref("WorkerIdentity"), _obj({"lease": uuid}, ["lease"])],
        },
        "Heartbeat": _obj(
            {"held": {"type": "integer", "minimum": 1}, "lease_seconds": {"type": "number"}},
            ["held", "lease_seconds"],
        ),
        "CompleteRequest": {
            "allOf": [
                _ref("WorkerIdentity"),
                _obj(
                    {
                        "lease": uuid,
                        "model_revision": {"type": ["string", "null"]},
                        "results": {
                            "type": "array",
                            "items": _obj(
                                {
                                    "id": item_id,
                                    "embedding": {
                                        "type": "string",
                                        "contentEncoding": "base64",
                                        "pattern": FLOAT32_BASE64,
                                        "description": "little-endian float32 bytes, base64",
                                    },
                                    "tokens": {
                                        "type": ["integer", "null"],
                                        "minimum": 0,
                                        "maximum": MAX_TOKENS,
                                    },
                                },
                                ["id", "embedding"],
                            ),
                        },
                        "failures": {
                            "type": "array",
                            "items": _obj(
                                {
                                    "id": item_id,
                                    "error": {"type": ["string", "null"]},
                                    "code": {
                                        "description": "one of "
                                        + ", ".join(sorted(FAILURE_CODES))
                                        + "; anything else counts as backend_error"
                                    },
                                    "retry": {"type": ["boolean", "null"]},
                                },
                                ["id"],
                            ),
                        },
                    },
                    ["lease"],
                ),
            ]
        },
        "Completed": _obj(
            {
                name: {"type": "array", "items": item_id}
                for name in ("completed", "failed", "refused")
            },
            ["completed", "failed", "refused"],
        ),
        "CompleteConflict": {"allOf": [_ref("Error"), _ref("Completed")]},
        "ReleaseRequest": {
            "allOf": [
                _ref("WorkerIdentity"),
                _obj({"lease": uuid, "ids": {"type": "array", "items": item_id}}, ["lease", "ids"]),
            ]
        },
        "Released": _obj({"released": {"type": "array", "items": item_id}}, ["released"]),
    }


def _error_responses() -> Schema:
    error = _ref("Error")
    retry_after = _header("seconds to wait before retrying", {"type": "integer", "minimum": 0})
    return {
        "BadRequest": _json(error, "The request is malformed; `param` names the field."),
        "Unauthorized": _json(
            error,
            "No bearer token, or one not valid for this endpoint's scope.",
            {"WWW-Authenticate": _header("Bearer")},
        ),
        "NotFound": _json(error, "No such task (or not yours), or no such model."),
        "Conflict": _json(error, "The lease was lost: it expired or its items were finished."),
        "PayloadTooLarge": _json(error, "The body is larger than the server accepts."),
        "UnsupportedMediaType": _json(error, "The body is not sent as application/json."),
        "TooManyRequests": _json(
            error, "The queue is full; retry later.", {"Retry-After": retry_after}
        ),
        "InternalError": _json(error, "A server bug; it is logged."),
        "BadGateway": _json(error, "The task failed on the worker's side (backend error)."),
        "Unavailable": _json(
            error,
            "Retryable. Code task_pending: the vectors are not ready yet; retry the identical "
            "request to keep waiting for the same task, or poll GET /tasks/{task_id}. Code "
            "database_unavailable: PostgreSQL is restarting or out of reach. Code "
            "server_busy: the server is serving MAX_IN_FLIGHT requests already.",
            {
                "Retry-After": retry_after,
                "X-Should-Retry": _header("true: retrying is safe", {"enum": ["true", "false"]}),
                "X-Embedq-Task": _header("the task id", {"type": "string", "format": "uuid"}),
            },
        ),
    }


def _paths(settings: Settings) -> Schema:
    client: list[Schema] = [{"clientToken": []}]
    worker: list[Schema] = [{"workerToken": []}]
    task_header = {"X-Embedq-Task": _header("the task id", {"type": "string", "format": "uuid"})}
    task_id = {
        "name": "task_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "the id a request answered with; another client's id answers 404",
    }
    fmt = {
        "name": "encoding_format",
        "in": "query",
        "schema": {"enum": ["float", "base64"], "default": "float"},
    }
    wait = {
        "name": "wait_seconds",
        "in": "query",
        "schema": {"type": "integer", "minimum": 0, "maximum": int(settings.max_wait)},
        "description": "long-poll: seconds to wait for the task to finish",
    }
    body_errors = (
        "BadRequest",
        "Unauthorized",
        "PayloadTooLarge",
        "UnsupportedMediaType",
        "InternalError",
        "Unavailable",
    )

    def body(name: str) -> Schema:
        return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}

    return {
        "/v1/embeddings": {
            "post": {
                "operationId": "createEmbeddings",
                "summary": "Embed texts (OpenAI-compatible), through the queue",
                "security": client,
                "requestBody": body("EmbeddingRequest"),
                "responses": _responses(
                    *body_errors,
                    "NotFound",
                    "TooManyRequests",
                    "BadGateway",
                    s200=_json(_ref("EmbeddingList"), "The vectors, in input order.", task_header)
                    | {"links": _task_links("$response.header.X-Embedq-Task")},
                    s202=_json(
                        _ref("TaskAccepted"),
                        "Not ready within wait_seconds: poll the task.",
                        {"Location": _header("/tasks/{task_id}"), **task_header},
                    )
                    | {"links": _task_links("$response.body#/id")},
                ),
            }
        },
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "summary": "Models served by workers seen recently",
                "security": client,
                "responses": _responses(
                    "Unauthorized",
                    "InternalError",
                    "Unavailable",
                    s200=_json(_ref("ModelList"), "The models."),
                ),
            }
        },
        "/tasks/{task_id}": {
            "get": {
                "operationId": "getTask",
                "summary": "A task's state, and its vectors once completed",
                "security": client,
                "parameters": [task_id, fmt, wait],
                "responses": _responses(
                    "BadRequest",
                    "Unauthorized",
                    "NotFound",
                    "InternalError",
                    "Unavailable",
                    s200=_json(_ref("Task"), "The task."),
                ),
            }
        },
        "/tasks/{task_id}/result": {
            "get": {
                "operationId": "getTaskResult",
                "summary": "A task's vectors in OpenAI's format, or 202 while it runs",
                "security": client,
                "parameters": [task_id, fmt, wait],
                "responses": _responses(
                    "BadRequest",
                    "Unauthorized",
                    "NotFound",
                    "InternalError",
                    "BadGateway",
                    "Unavailable",
                    s200=_json(_ref("EmbeddingList"), "The vectors.", task_header),
                    s202=_json(
                        _ref("TaskAccepted"),
                        "Still running.",
                        {"Retry-After": _header("seconds", {"type": "integer"})},
                    ),
                ),
            }
        },
        "/worker/claim": {
            "post": {
                "operationId": "claim",
                "summary": "Lease pending inputs of the worker's models (long-polls)",
                "security": worker,
                "requestBody": body("ClaimRequest"),
                "responses": _responses(*body_errors, s200=_json(_ref("Claim"), "A lease.")),
            }
        },
        "/worker/heartbeat": {
            "post": {
                "operationId": "heartbeat",
                "summary": "Extend a lease",
                "security": worker,
                "requestBody": body("LeaseRequest"),
                "responses": _responses(
                    *body_errors,
                    "Conflict",
                    s200=_json(_ref("Heartbeat"), "Extended."),
                ),
            }
        },
        "/worker/complete": {
            "post": {
                "operationId": "complete",
                "summary": "Post a batch's vectors and per-input failures",
                "description": (
                    "JSON as below, or (what embedq-worker sends) `Content-Type: "
                    "application/x-embedq-results`: the same object on one line, each "
                    "result giving its vector's length in `bytes` instead of an "
                    "`embedding`, then a newline, then the vectors' little-endian float32 "
                    "bytes back to back in the results' order (no base64)."
                ),
                "security": worker,
                "requestBody": body("CompleteRequest"),
                "responses": _responses(
                    *body_errors,
                    s200=_json(_ref("Completed"), "What was accepted, and what refused."),
                    s409=_json(_ref("CompleteConflict"), "Nothing accepted: the lease was lost."),
                ),
            }
        },
        "/worker/release": {
            "post": {
                "operationId": "release",
                "summary": "Hand back claimed inputs a stopping worker never started",
                "security": worker,
                "requestBody": body("ReleaseRequest"),
                "responses": _responses(
                    *body_errors,
                    s200=_json(_ref("Released"), "The ids put back in the queue."),
                ),
            }
        },
        "/worker/channel": {
            "get": {
                "operationId": "workerChannel",
                "summary": "The four worker routes above as messages on one WebSocket",
                "description": (
                    "What embedq-worker uses (WORKER_CHANNEL=off: the routes above). Binary "
                    'frames. To the server: a line of JSON `{"id": n, "op": op}` (op: claim, '
                    "heartbeat, release or complete), a newline, then the body that op's "
                    "route takes (for complete, the application/x-embedq-results layout); "
                    '`{"id": n, "op": "cancel"}` gives up claim n (what it leased goes '
                    'back). From the server: `{"id": n, "status": s, "body": ...}`, the '
                    "status and JSON body the route would have answered."
                ),
                "security": worker,
                "responses": _responses(
                    "BadRequest",
                    "Unauthorized",
                    s101={"description": "Switching to the WebSocket protocol."},
                ),
            }
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Is the database answering? (no token)",
                "security": [],
                "responses": {
                    "200": _json(_ref("Health"), "Healthy."),
                    "503": _json(_ref("Health"), "The database is down."),
                },
            }
        },
        "/ready": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness for load balancers: database, LISTEN connection, not "
                "stopping (no token)",
                "security": [],
                "responses": {
                    "200": _json(_ref("Ready"), "Ready to serve."),
                    "503": _json(_ref("Ready"), "Not ready: see which part is down."),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics: counts, durations and model names, never texts",
                "description": "Token-free unless the server sets METRICS_TOKEN.",
                "security": [{}, {"metricsToken": []}],
                "responses": {
                    "200": {
                        "description": "The Prometheus text format, or OpenMetrics when the "
                        "Accept header asks for it.",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/openmetrics-text": {"schema": {"type": "string"}},
                        },
                    },
                    "401": {
                        "description": "METRICS_TOKEN is set and was not presented.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                },
            }
        },
        "/status": {
            "get": {
                "operationId": "statusPage",
                "summary": "An HTML status page for people: queue, workers, recent failures",
                "description": "Takes a client token as a bearer token or as ?token=.",
                "security": [{"clientToken": []}, {"clientTokenQuery": []}],
                "responses": {
                    "200": {
                        "description": "The page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "401": {
                        "description": "A sign-in form.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "500": {"$ref": "#/components/responses/InternalError"},
                    "503": {"$ref": "#/components/responses/Unavailable"},
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This description (no token)",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1.")},
            }
        },
    }


def build_spec(settings: Settings) -> dict[str, Any]:
    """The whole description, as a JSON-ready dict."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "embedq",
            "version": VERSION,
            "description": "An OpenAI-compatible embeddings queue: clients submit texts, "
            "workers behind NAT claim and compute them. Every error is answered in "
            'OpenAI\'s envelope {"error": {"message", "type", "param", "code"}}.',
        },
        "security": [{"clientToken": []}],
        "paths": _paths(settings),
        "components": {
            "securitySchemes": {
                "clientToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A client token (AUTH_TOKEN): /v1 and /tasks only.",
                },
                "clientTokenQuery": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "A client token in the query string (the status page only).",
                },
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "METRICS_TOKEN, if the server sets one: /metrics only.",
                },
                "workerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A worker token (WORKER_TOKEN): /worker only.",
                },
            },
            "schemas": _schemas(settings),
            "responses": _error_responses(),
        },
    }


def setup(app: web.Application) -> None:
    body = json.dumps(build_spec(app[SETTINGS]), indent=1).encode()

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app.router.add_get("/openapi.json", openapi_json)
