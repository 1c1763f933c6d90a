"""The Ollama backend: one `/api/embed` call per batch, spread over one or more Ollama
instances (one per GPU), since one instance evaluates embedding inputs one at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from .base import (
    BackendError,
    BackendInfo,
    BackendUnavailable,
    EmbedResult,
    InputRejected,
    ModelNotFound,
    floats_to_bytes,
    split_tokens,
)

log = logging.getLogger(__name__)

BACKOFF_MIN = 1.0  # seconds an instance rests after its first failure
BACKOFF_MAX = 30.0  # ... and at most, doubling on each failure in a row
MISSING_RECHECK = 60.0  # seconds before asking again an instance that lacked a model
START_TIMEOUT = 10.0  # seconds for each instance's /api/tags at start


def tagged(name: str) -> str:
    """Ollama's full name of a model: `name:latest` when no tag is given."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


@dataclass(eq=False)
class _Instance:
    """One Ollama server and what this backend has learnt about it."""

    url: str
    in_flight: int = 0
    failures: int = 0  # in a row
    down_until: float = 0.0  # monotonic time
    missing: dict[str, float] = field(default_factory=dict)  # model -> recheck at (monotonic)

    def up(self, now: float) -> bool:
        return self.down_until <= now

    def may_have(self, model: str, now: float) -> bool:
        return self.missing.get(model, 0.0) <= now

    def mark_down(self, now: float) -> None:
        self.failures += 1
        backoff = min(BACKOFF_MIN * 2 ** (self.failures - 1), BACKOFF_MAX)
        self.down_until = now + backoff

    def mark_up(self) -> None:
        self.failures = 0
        self.down_until = 0.0


class OllamaBackend:
    """Embeds with Ollama's `/api/embed`, one call per batch with a list `input`.

    Each call goes to the least busy instance that is up; an instance that fails (refused,
    timed out, 5xx, busy) rests for a growing backoff and the call moves to another, so a
    dead GPU box does not stop the others. `truncate=False` makes an over-long input an
    InputRejected (the runner then fails only that input) instead of a silently cut vector.
    """

    name: str = "ollama"

    def __init__(
        self,
        urls: list[str],
        *,
        keep_alive: str = "30m",
        truncate: bool = False,
        timeout: float = 120.0,
    ) -> None:
        if not urls:
            raise ValueError("the Ollama backend needs at least one Ollama URL")
        self._instances = [_Instance(url.rstrip("/")) for url in urls]
        self.concurrency: int = len(self._instances)
        self._keep_alive = keep_alive
        self._truncate = truncate
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._digests: dict[str, str | None] = {}
        self._turn = 0  # rotates ties between equally idle instances

    @property
    def endpoint(self) -> str:
        return ",".join(inst.url for inst in self._instances)

    async def start(self, models: list[str]) -> BackendInfo:
        """Read every instance's /api/tags to learn digests and who has which model.

        Raises ModelNotFound when every instance answered and none has a model. An instance
        that does not answer is only logged and rested: Ollama may be starting or briefly
        down, and the worker must keep going; its calls then fail as BackendUnavailable
        until it is back, and a model it lacks shows up as ModelNotFound on first use.
        """
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                raise_for_status=False,
            )
        tags = await asyncio.gather(*(self._tags(inst) for inst in self._instances))
        now = time.monotonic()
        answered = [(i, t) for i, t in zip(self._instances, tags, strict=True) if t is not None]
        for model in models:
            full = tagged(model)
            digests = [t[full] for _, t in answered if full in t]
            for inst, t in answered:
                if full not in t:
                    inst.missing[model] = now + MISSING_RECHECK
            self._digests[model] = digests[0] if digests else None
            if digests:
                continue
            if len(answered) == len(self._instances):
                raise ModelNotFound(
                    f"model '{model}' is not on Ollama at {self.endpoint}: "
                    f"run `ollama pull {model}` there"
                )
            if answered:
                log.warning(
                    "model missing on the Ollama instances that answered model=%s "
                    "hint='ollama pull %s'",
                    model,
                    model,
                )
        return BackendInfo(
            name=self.name, endpoint=self.endpoint, models={m: self._digests[m] for m in models}
        )

    async def _tags(self, inst: _Instance) -> dict[str, str | None] | None:
        """The instance's models (full name -> digest), or None when it does not answer."""
        try:
            async with self._http().get(
                f"{inst.url}/api/tags", timeout=aiohttp.ClientTimeout(total=START_TIMEOUT)
            ) as resp:
                resp.raise_for_status()
                body = await resp.json(content_type=None)
            return {m["name"]: m.get("digest") for m in body.get("models") or []}
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            log.warning("ollama unreachable at start url=%s error=%r", inst.url, exc)
            inst.mark_down(time.monotonic())
            return None

    async def embed(self, model: str, texts: list[str], dimensions: int | None) -> EmbedResult:
        """Embed on the least busy instance that is up, moving to another when one fails."""
        if not texts:
            return EmbedResult(vectors=[], tokens=[], model_revision=self._digests.get(model))
        tried: set[_Instance] = set()
        last_error: BackendError | None = None
        while (inst := self._pick(model, tried) or self._soonest_back(model, tried)) is not None:
            tried.add(inst)
            inst.in_flight += 1
            try:
                result = await self._embed_on(inst, model, texts, dimensions)
            except BackendUnavailable as exc:
                inst.mark_down(time.monotonic())
                log.warning("ollama call failed url=%s model=%s error=%s", inst.url, model, exc)
                last_error = exc
                continue
            except ModelNotFound as exc:
                inst.missing[model] = time.monotonic() + MISSING_RECHECK
                last_error = exc
                continue
            finally:
                inst.in_flight -= 1
            inst.mark_up()
            return result
        raise self._no_instance_error(model, last_error)

    def _pick(self, model: str, tried: set[_Instance]) -> _Instance | None:
        """The least busy instance that is up, may have the model and was not tried yet."""
        now = time.monotonic()
        count = len(self._instances)
        order = [self._instances[(self._turn + i) % count] for i in range(count)]
        candidates = [
            inst
            for inst in order
            if inst not in tried and inst.up(now) and inst.may_have(model, now)
        ]
        if not candidates:
            return None
        self._turn = (self._turn + 1) % count
        return min(candidates, key=lambda inst: inst.in_flight)

    def _soonest_back(self, model: str, tried: set[_Instance]) -> _Instance | None:
        """When every instance is resting, try the one due back first rather than failing
        without a call: the runner's own backoff paces these retries."""
        if tried:
            return None
        now = time.monotonic()
        resting = [inst for inst in self._instances if inst.may_have(model, now)]
        return min(resting, key=lambda inst: inst.down_until, default=None)

    def _no_instance_error(self, model: str, last_error: BackendError | None) -> BackendError:
        """Why no instance could serve: a missing model only when no instance may have it."""
        now = time.monotonic()
        if all(not inst.may_have(model, now) for inst in self._instances):
            if isinstance(last_error, ModelNotFound):
                return last_error
            return ModelNotFound(
                f"model '{model}' is not on Ollama at {self.endpoint}: "
                f"run `ollama pull {model}` there"
            )
        if isinstance(last_error, BackendUnavailable):
            return last_error
        return BackendUnavailable(f"no Ollama instance is up at {self.endpoint}")

    async def _embed_on(
        self, inst: _Instance, model: str, texts: list[str], dimensions: int | None
    ) -> EmbedResult:
        payload: dict[str, Any] = {
            "model": model,
            "input": texts,
            "truncate": self._truncate,
            "keep_alive": self._keep_alive,
        }
        if dimensions is not None:
            payload["dimensions"] = dimensions
        try:
            async with self._http().post(f"{inst.url}/api/embed", json=payload) as resp:
                status = resp.status
                raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendUnavailable(f"ollama at {inst.url}: {exc!r}") from exc
        if status != 200:
            raise _status_error(inst.url, model, status, raw)
        try:
            # orjson: stdlib json took half the worker's CPU here (13 ms per 64 vectors),
            # time the GPU spent waiting for the next batch.
            body = orjson.loads(raw)
            embeddings = body["embeddings"]
            vectors = [floats_to_bytes(vector) for vector in embeddings]
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise BackendError(f"ollama at {inst.url} sent a malformed answer: {exc!r}") from exc
        if len(vectors) != len(texts):
            raise BackendError(
                f"ollama at {inst.url} sent {len(vectors)} vectors for {len(texts)} inputs"
            )
        tokens = split_tokens(int(body.get("prompt_eval_count") or 0), texts)
        return EmbedResult(vectors=vectors, tokens=tokens, model_revision=self._digests.get(model))

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("OllamaBackend.start() was not called")
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _status_error(url: str, model: str, status: int, raw: bytes) -> BackendError:
    """Map an Ollama error answer to the error the runner acts on."""
    message = _error_message(raw)
    where = f"ollama at {url} answered {status}: {message}"
    if status == 404:
        return ModelNotFound(f"{where} (run `ollama pull {model}` there)")
    if status in (400, 413, 422):
        return InputRejected(where)
    if status in (408, 429) or status >= 500:
        return BackendUnavailable(where)
    return BackendError(where)


def _error_message(raw: bytes) -> str:
    """Ollama's `{"error": "..."}`, or the start of whatever else came back."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:200].decode(errors="replace")
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return raw[:200].decode(errors="replace")
