"""A stand-in for Ollama's HTTP API (the embedding parts), serving the fake vectors of
`tests.doubles.vectors`, so the worker can be tested and benchmarked without a GPU.

In a test:   async with run_ollama_double(dim=64) as url: ...
As a process: python -m tests.doubles.ollama --port 11434 --fixed-ms 5 --per-text-ms 0.5
(prints `listening on http://host:port` once it listens).

Tokens (`prompt_eval_count`) follow `fake_token_count`: len(text) // 4 + 1 per input, after
truncation to the context. The context is counted in characters (`context_chars`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

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
from tests.doubles.vectors import DEFAULT_DIM, canonical_model, expected_json, fake_token_count

DEFAULT_MODELS = ("nomic-embed-text", "all-minilm")
DEFAULT_CONTEXT_CHARS = 8192
DEFAULT_PORT = 11434
DEFAULT_KEEP_ALIVE = 300.0  # seconds a model stays loaded after a call, as Ollama's 5m
VERSION = "0.12.3"
BUSY_ERROR = "server busy, please try again.  maximum pending requests exceeded"
CONTEXT_ERROR = "the input length exceeds the context length"
FAKE_LOAD_NS = 1_000_000  # load_duration reported when a call loads the model
MODIFIED_AT = "2025-01-01T00:00:00Z"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def tagged(name: str) -> str:
    """Ollama's full name of a model: `name:latest` when no tag is given."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def model_digest(name: str) -> str:
    """The digest the double reports for a model in /api/tags (stable, 64 hex digits)."""
    return hashlib.sha256(f"embedq-double:{canonical_model(name)}".encode()).hexdigest()


def _architecture(name: str) -> str:
    return "nomic-bert" if "nomic" in name else "bert"


def _details(name: str) -> dict[str, Any]:
    arch = _architecture(name)
    return {
        "parent_model": "",
        "format": "gguf",
        "family": arch,
        "families": [arch],
        "parameter_size": "137M",
        "quantization_level": "F16",
    }


def parse_keep_alive(value: Any) -> float | None:
    """Seconds a model stays loaded (None: forever), from Ollama's keep_alive: a number of
    seconds or a Go duration like "30m"; negative means forever."""
    if value is None:
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, bool):
        raise ValueError(f"invalid keep_alive {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        text = text.lstrip("+-")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = sign * float(text)
        else:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"time: invalid duration {value!r}")
            seconds = sign * sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise ValueError(f"invalid keep_alive {value!r}")
    return None if seconds < 0 else seconds


@dataclass
class OllamaDouble:
    """The models a double serves and which of them are loaded."""

    models: Sequence[str] = DEFAULT_MODELS
    dim: int = DEFAULT_DIM
    context_chars: int = DEFAULT_CONTEXT_CHARS
    loaded: dict[str, float | None] = field(default_factory=dict)  # model -> expiry (epoch s)

    def __post_init__(self) -> None:
        self.models = [tagged(m) for m in self.models]

    def find(self, name: Any) -> str | None:
        """The served model's full name, or None when the double does not have it."""
        if not isinstance(name, str) or not name:
            return None
        full = tagged(name)
        return full if full in self.models else None

    def touch(self, model: str, keep_alive: float | None) -> bool:
        """Mark a model loaded for keep_alive seconds; True when the call had to load it."""
        now = time.time()
        expiry = self.loaded.get(model, 0.0)
        was_loaded = model in self.loaded and (expiry is None or expiry > now)
        if keep_alive == 0:
            self.loaded.pop(model, None)
        else:
            self.loaded[model] = None if keep_alive is None else now + keep_alive
        return not was_loaded

    def entry(self, model: str) -> dict[str, Any]:
        return {
            "name": model,
            "model": model,
            "modified_at": MODIFIED_AT,
            "size": 274_302_450,
            "digest": model_digest(model),
            "details": _details(model),
        }


OLLAMA = web.AppKey("ollama_double", OllamaDouble)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _not_found(name: Any) -> web.Response:
    return _error(404, f"model '{name}' not found")


def _injected(status: int) -> web.Response:
    return _error(status, BUSY_ERROR if status == 503 else "injected failure")


def _parse_input(value: Any) -> list[str] | None:
    """The inputs of /api/embed, or None when they are not a string or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


async def _embed(request: web.Request) -> web.Response:
    state, double = request.app[STATE], request.app[OLLAMA]
    started = time.perf_counter_ns()
    body = await read_json(request)
    if not isinstance(body, dict):
        return _error(400, "invalid request body")
    status = state.take_failure()
    if status is not None:
        return _injected(status)
    if not body.get("model"):
        return _error(400, "model is required")
    texts = _parse_input(body.get("input"))
    if texts is None:
        return _error(400, "invalid input type")
    model = double.find(body["model"])
    if model is None:
        return _not_found(body["model"])
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 0
    ):
        return _error(400, "dimensions must be a positive integer")
    try:
        keep_alive = parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        return _error(400, str(exc))
    limit = double.context_chars
    if body.get("truncate", True):
        texts = [text[:limit] for text in texts]
    elif any(len(text) > limit for text in texts):
        return _error(400, CONTEXT_ERROR)
    if not texts:
        return web.json_response({"model": body["model"], "embeddings": []})
    summary = {k: v for k, v in body.items() if k != "input"} | {"n_inputs": len(texts)}
    try:
        async with state.computing(summary, len(texts)):  # the vectors, in the GPU's time
            vectors = [expected_json(model, t, dimensions or None, double.dim) for t in texts]
    except Busy:
        return _error(503, BUSY_ERROR)
    loaded_now = double.touch(model, keep_alive)
    payload = (
        f'{{"model":{json.dumps(body["model"])},"embeddings":[{",".join(vectors)}],'
        f'"total_duration":{time.perf_counter_ns() - started},'
        f'"load_duration":{FAKE_LOAD_NS if loaded_now else 0},'
        f'"prompt_eval_count":{sum(map(fake_token_count, texts))}}}'
    )
    return web.Response(text=payload, content_type="application/json")


async def _legacy_embeddings(request: web.Request) -> web.Response:
    """The superseded one-prompt endpoint; its vectors are the normalised ones here."""
    state, double = request.app[STATE], request.app[OLLAMA]
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("prompt", ""), str):
        return _error(400, "invalid request body")
    status = state.take_failure()
    if status is not None:
        return _injected(status)
    model = double.find(body.get("model"))
    if model is None:
        return _not_found(body.get("model"))
    prompt = body.get("prompt", "")[: double.context_chars]
    if not prompt:
        return web.json_response({"embedding": []})
    try:
        async with state.computing({"model": body["model"], "n_inputs": 1}, 1):
            vector = expected_json(model, prompt, None, double.dim)
    except Busy:
        return _error(503, BUSY_ERROR)
    return web.Response(text=f'{{"embedding":{vector}}}', content_type="application/json")


async def _tags(request: web.Request) -> web.Response:
    double = request.app[OLLAMA]
    return web.json_response({"models": [double.entry(m) for m in double.models]})


async def _show(request: web.Request) -> web.Response:
    double = request.app[OLLAMA]
    body = await read_json(request)
    name = (body.get("model") or body.get("name")) if isinstance(body, dict) else None
    model = double.find(name)
    if model is None:
        return _not_found(name)
    arch = _architecture(model)
    return web.json_response(
        {
            "license": "",
            "modelfile": f"FROM {model}\n",
            "parameters": "",
            "template": "",
            "details": _details(model),
            "model_info": {
                "general.architecture": arch,
                "general.parameter_count": 136_727_040,
                f"{arch}.embedding_length": double.dim,
                f"{arch}.context_length": fake_token_count("x" * double.context_chars),
            },
            "capabilities": ["embedding"],
            "modified_at": MODIFIED_AT,
        }
    )


async def _ps(request: web.Request) -> web.Response:
    double = request.app[OLLAMA]
    now = time.time()
    running = []
    for model, expiry in double.loaded.items():
        if expiry is not None and expiry <= now:
            continue
        entry = double.entry(model)
        forever = datetime(2318, 1, 1, tzinfo=UTC)  # how Ollama shows "keep forever"
        expires = forever if expiry is None else datetime.fromtimestamp(expiry, UTC)
        entry |= {"expires_at": expires.isoformat(), "size_vram": entry["size"]}
        running.append(entry)
    return web.json_response({"models": running})


async def _version(request: web.Request) -> web.Response:
    return web.json_response({"version": VERSION})


def create_ollama_app(
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    dim: int = DEFAULT_DIM,
    fixed_ms: float = 0.0,
    per_text_ms: float = 0.0,
    max_queue: int = DEFAULT_MAX_QUEUE,
    context_chars: int = DEFAULT_CONTEXT_CHARS,
) -> web.Application:
    """The double as an aiohttp application; see the module docstring for the knobs."""
    app = new_app(DoubleState(fixed_ms=fixed_ms, per_text_ms=per_text_ms, max_queue=max_queue))
    app[OLLAMA] = OllamaDouble(models=models, dim=dim, context_chars=context_chars)
    app.router.add_post("/api/embed", _embed)
    app.router.add_post("/api/embeddings", _legacy_embeddings)
    app.router.add_get("/api/tags", _tags)
    app.router.add_post("/api/show", _show)
    app.router.add_get("/api/ps", _ps)
    app.router.add_get("/api/version", _version)
    return app


@asynccontextmanager
async def run_ollama_double(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    models: Sequence[str] = DEFAULT_MODELS,
    dim: int = DEFAULT_DIM,
    fixed_ms: float = 0.0,
    per_text_ms: float = 0.0,
    max_queue: int = DEFAULT_MAX_QUEUE,
    context_chars: int = DEFAULT_CONTEXT_CHARS,
) -> AsyncIterator[str]:
    """Serve a double in the running event loop and yield its URL (port 0: a free port)."""
    app = create_ollama_app(
        models=models,
        dim=dim,
        fixed_ms=fixed_ms,
        per_text_ms=per_text_ms,
        max_queue=max_queue,
        context_chars=context_chars,
    )
    async with serve(app, host, port) as url:
        yield url


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A stand-in for Ollama's HTTP API.")
    add_common_arguments(parser, DEFAULT_PORT)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated")
    parser.add_argument("--context-chars", type=int, default=DEFAULT_CONTEXT_CHARS)
    args = parser.parse_args(argv)
    app = create_ollama_app(
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        dim=args.dim,
        fixed_ms=args.fixed_ms,
        per_text_ms=args.per_text_ms,
        max_queue=args.max_queue,
        context_chars=args.context_chars,
    )
    run_until_signalled(app, args.host, args.port)


if __name__ == "__main__":
    main()
