"""A stand-in for an OpenAI-compatible embeddings server (vLLM, TEI, Infinity) serving the
fake vectors of `tests.doubles.vectors`, with OpenAI's error envelope.

In a test:    async with run_openai_double(api_key="sk-test") as base_url: ...  # ends in /v1
As a process: python -m tests.doubles.openai_compat --port 8000 --api-key sk-test
(prints `listening on http://host:port`; the API is under /v1).

Token counts (`usage`) follow `fake_token_count`. A full queue answers 429, as TEI and
Infinity do.
"""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from tests.doubles.common import (
    DEFAULT_MAX_QUEUE,
    STATE,
    Busy,
    DoubleState,
    add_common_arguments,
    new_app,
    read_json,
    run_until_signalled,
    serve,
)
from tests.doubles.vectors import DEFAULT_DIM, expected_bytes, expected_json, fake_token_count

DEFAULT_MODELS = ("text-embedding-3-small", "nomic-embed-text")
DEFAULT_PORT = 8000
MAX_INPUTS = 2048  # OpenAI's limit of inputs per request
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


@dataclass(frozen=True)
class OpenAIDouble:
    """How this double behaves, beyond the shared knobs."""

    models: Sequence[str] = DEFAULT_MODELS
    dim: int = DEFAULT_DIM
    api_key: str | None = None  # when set, requests need `Authorization: Bearer <key>`
    float_only: bool = False  # ignore encoding_format and always answer floats
    max_inputs: int = MAX_INPUTS


OPENAI = web.AppKey("openai_double", OpenAIDouble)


def error_response(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> web.Response:
    """An error in OpenAI's envelope, with all four keys."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {"Retry-After": "1"} if status == 429 else None
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a missing or wrong API key on the API routes, as OpenAI does."""
    key = request.app[OPENAI].api_key
    if key is not None and request.path.startswith("/v1/"):
        if request.headers.get("Authorization") != f"Bearer {key}":
            return error_response(401, "Incorrect API key provided.", code="invalid_api_key")
    return await handler(request)


def _parse_input(value: Any, max_inputs: int) -> tuple[list[str] | None, str]:
    """The inputs, or None and why they are refused."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None, "'input' must be a string or an array of strings"
    if not value:
        return None, "'input' must not be empty"
    if len(value) > max_inputs:
        return None, f"'input' holds {len(value)} items, more than {max_inputs}"
    if any(not item for item in value):
        return None, "'input' must not contain empty strings"
    return value, ""


def _invalid(message: str, param: str) -> web.Response:
    return error_response(400, message, param=param)


async def _embeddings(request: web.Request) -> web.Response:
    state, double = request.app[STATE], request.app[OPENAI]
    body = await read_json(request)
    if not isinstance(body, dict):
        return _invalid("We could not parse the JSON body of your request.", "body")
    status = state.take_failure()
    if status is not None:
        return error_response(status, "injected failure")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _invalid("You must provide a model parameter.", "model")
    texts, why = _parse_input(body.get("input"), double.max_inputs)
    if texts is None:
        return _invalid(why, "input")
    if model not in double.models:
        return error_response(
            404, f"The model `{model}` does not exist.", param="model", code="model_not_found"
        )
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        return _invalid("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions
    ):
        return _invalid("'dimensions' must be a positive integer", "dimensions")
    if dimensions is not None and dimensions > double.dim:
        return _invalid(f"'dimensions' must be at most {double.dim}", "dimensions")
    summary = {k: v for k, v in body.items() if k != "input"} | {"n_inputs": len(texts)}
    try:
        async with state.computing(summary, len(texts)):
            if encoding == "base64" and not double.float_only:
                vectors = [
                    json.dumps(
                        base64.b64encode(expected_bytes(model, t, dimensions, double.dim)).decode()
                    )
                    for t in texts
                ]
            else:
                vectors = [expected_json(model, t, dimensions, double.dim) for t in texts]
    except Busy:
        return error_response(429, "The server is busy, please retry.")
    data = ",".join(
        f'{{"object":"embedding","index":{i},"embedding":{v}}}' for i, v in enumerate(vectors)
    )
    tokens = sum(map(fake_token_count, texts))
    payload = (
        f'{{"object":"list","data":[{data}],"model":{json.dumps(model)},'
        f'"usage":{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}}}'
    )
    return web.Response(text=payload, content_type="application/json")


async def _models(request: web.Request) -> web.Response:
    models = request.app[OPENAI].models
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "embedq-double"} for m in models]
    return web.json_response({"object": "list", "data": data})


def create_openai_app(
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    dim: int = DEFAULT_DIM,
    api_key: str | None = None,
    float_only: bool = False,
    models_endpoint: bool = True,
    max_inputs: int = MAX_INPUTS,
    fixed_ms: float = 0.0,
    per_text_ms: float = 0.0,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> web.Application:
    """The double as an aiohttp application; `models_endpoint=False` leaves out
    GET /v1/models, as some servers do."""
    state = DoubleState(fixed_ms=fixed_ms, per_text_ms=per_text_ms, max_queue=max_queue)
    app = new_app(state, _auth_middleware)
    app[OPENAI] = OpenAIDouble(
        models=tuple(models), dim=dim, api_key=api_key, float_only=float_only, max_inputs=max_inputs
    )
    app.router.add_post("/v1/embeddings", _embeddings)
    if models_endpoint:
        app.router.add_get("/v1/models", _models)
    return app


@asynccontextmanager
async def run_openai_double(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    models: Sequence[str] = DEFAULT_MODELS,
    dim: int = DEFAULT_DIM,
    api_key: str | None = None,
    float_only: bool = False,
    models_endpoint: bool = True,
    max_inputs: int = MAX_INPUTS,
    fixed_ms: float = 0.0,
    per_text_ms: float = 0.0,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> AsyncIterator[str]:
    """Serve a double in the running event loop and yield its base URL, ending in /v1
    (/_control and /_stats are at the root: strip the /v1)."""
    app = create_openai_app(
        models=models,
        dim=dim,
        api_key=api_key,
        float_only=float_only,
        models_endpoint=models_endpoint,
        max_inputs=max_inputs,
        fixed_ms=fixed_ms,
        per_text_ms=per_text_ms,
        max_queue=max_queue,
    )
    async with serve(app, host, port) as url:
        yield f"{url}/v1"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A stand-in for an OpenAI embeddings server.")
    add_common_arguments(parser, DEFAULT_PORT)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated")
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    parser.add_argument("--float-only", action="store_true", help="ignore encoding_format")
    parser.add_argument("--no-models-endpoint", action="store_true", help="no GET /v1/models")
    parser.add_argument("--max-inputs", type=int, default=MAX_INPUTS)
    args = parser.parse_args(argv)
    app = create_openai_app(
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        dim=args.dim,
        api_key=args.api_key,
        float_only=args.float_only,
        models_endpoint=not args.no_models_endpoint,
        max_inputs=args.max_inputs,
        fixed_ms=args.fixed_ms,
        per_text_ms=args.per_text_ms,
        max_queue=args.max_queue,
    )
    run_until_signalled(app, args.host, args.port)


if __name__ == "__main__":
    main()
