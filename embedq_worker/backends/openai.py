"""The OpenAI-compatible backend (vLLM, TEI, Infinity, OpenAI itself): one `/embeddings`
call per batch, asking for base64 so the float32 bytes arrive ready to store.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

import aiohttp

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

DEFAULT_CONCURRENCY = 4  # batches in flight: these servers batch concurrent requests themselves
START_TIMEOUT = 10.0  # seconds for GET /models at start


class AuthenticationFailed(BackendError):
    """The server refused the API key (401/403): retrying will not help, fix the key."""

    retryable = False


class OpenAIBackend:
    """Embeds with `POST {base_url}/embeddings`, base_url like http://host:8000/v1.

    Asks for `encoding_format: "base64"` and takes the bytes as they come, but copes with a
    server that answers floats anyway. Token counts come from `usage.prompt_tokens`.
    """

    name: str = "openai"

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.concurrency: int = concurrency
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self, models: list[str]) -> BackendInfo:
        """Check the key and the models with GET /models when the server has it.

        Raises AuthenticationFailed for a refused key and ModelNotFound for a model the
        list lacks. A server without /models is fine; one that does not answer is logged,
        not fatal, so the worker keeps going while it comes up.
        """
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        listed = await self._list_models()
        if listed is not None:
            for model in models:
                if model not in listed:
                    raise ModelNotFound(
                        f"model '{model}' is not served at {self.base_url} "
                        f"(it serves: {', '.join(sorted(listed)) or 'nothing'})"
                    )
        return BackendInfo(
            name=self.name, endpoint=self.base_url, models=dict.fromkeys(models, None)
        )

    async def _list_models(self) -> set[str] | None:
        """The served model ids, or None when the server cannot tell."""
        url = f"{self.base_url}/models"
        try:
            async with self._http().get(
                url, timeout=aiohttp.ClientTimeout(total=START_TIMEOUT)
            ) as resp:
                status, raw = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("openai server unreachable at start url=%s error=%r", url, exc)
            return None
        if status in (401, 403):
            raise _status_error(url, status, raw)
        if status != 200:
            log.info("no model list url=%s status=%d; models not checked", url, status)
            return None
        try:
            return {str(m["id"]) for m in json.loads(raw)["data"]}
        except (ValueError, KeyError, TypeError):
            log.info("unreadable model list url=%s; models not checked", url)
            return None

    async def embed(self, model: str, texts: list[str], dimensions: int | None) -> EmbedResult:
        if not texts:
            return EmbedResult(vectors=[], tokens=[])
        payload: dict[str, Any] = {"model": model, "input": texts, "encoding_format": "base64"}
        if dimensions is not None:
            payload["dimensions"] = dimensions
        try:
            async with self._http().post(f"{self.base_url}/embeddings", json=payload) as resp:
                status, raw = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendUnavailable(f"openai server at {self.base_url}: {exc!r}") from exc
        if status != 200:
            raise _status_error(f"{self.base_url}/embeddings", status, raw, model)
        try:
            body = json.loads(raw)
            data = sorted(body["data"], key=lambda item: item["index"])
            vectors = [_vector_bytes(item["embedding"]) for item in data]
            usage = body.get("usage") or {}
            total = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise BackendError(f"{self.base_url} sent a malformed answer: {exc!r}") from exc
        if len(vectors) != len(texts):
            raise BackendError(
                f"{self.base_url} sent {len(vectors)} vectors for {len(texts)} inputs"
            )
        return EmbedResult(vectors=vectors, tokens=split_tokens(total, texts))

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("OpenAIBackend.start() was not called")
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _vector_bytes(embedding: Any) -> bytes:
    """The float32 bytes of one vector, from base64 as asked or floats from a server that
    ignored the request."""
    if isinstance(embedding, str):
        data = base64.b64decode(embedding, validate=True)
        if len(data) % 4:
            raise ValueError(f"base64 vector of {len(data)} bytes is not float32")
        return data
    if isinstance(embedding, list):
        return floats_to_bytes(embedding)
    raise TypeError(f"unexpected embedding of type {type(embedding).__name__}")


def _status_error(url: str, status: int, raw: bytes, model: str | None = None) -> BackendError:
    """Map an error answer to the error the runner acts on."""
    message = f"{url} answered {status}: {_error_message(raw)}"
    if status in (401, 403):
        return AuthenticationFailed(f"the API key was refused: {message}")
    if status == 404:
        return ModelNotFound(f"model '{model}' not found: {message}")
    if status in (400, 413, 422):
        return InputRejected(message)
    if status in (408, 409, 429) or status >= 500:
        return BackendUnavailable(message)
    return BackendError(message)


def _error_message(raw: bytes) -> str:
    """The message of OpenAI's envelope `{"error": {"message": ...}}`, of the flat bodies
    TEI (`{"error": "..."}`) and vLLM (`{"message": ...}`) send, or the start of the body."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if body.get("message"):
            return str(body["message"])
    return raw[:200].decode(errors="replace")
