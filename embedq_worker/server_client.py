"""The worker's HTTP calls to the server: claim, heartbeat, complete, release.

Only outgoing requests, so a worker behind NAT needs no open port.
"""

from __future__ import annotations

import base64
import json
import logging
import platform
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from embedq_common.protocol import CHANNEL_PATH, RESULTS_TYPE

from . import __version__
from .channel import Channel, ChannelUnsupported

log = logging.getLogger("embedq.worker.server")


class ServerError(Exception):
    """The server could not be reached or answered 5xx: retry later."""


class LeaseLost(Exception):
    """The server refused the call because the lease is gone (409)."""


class Rejected(Exception):
    """The server refused the call for good (401, 400): retrying will not help."""


class Unsupported(Rejected):
    """The server does not take this kind of body (415)."""


@dataclass(frozen=True, slots=True)
class Item:
    id: int
    input: str
    model: str
    dimensions: int | None


@dataclass(frozen=True, slots=True)
class Batch:
    lease: str
    lease_seconds: float
    items: list[Item]

    @property
    def model(self) -> str:
        return self.items[0].model

    @property
    def dimensions(self) -> int | None:
        return self.items[0].dimensions


@dataclass(frozen=True, slots=True)
class ItemFailure:
    id: int
    error: str
    code: str
    retry: bool


class ServerClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        name: str,
        models: list[str],
        backend: str,
        channel: bool = True,
    ) -> None:
        """`channel`: call the server on one WebSocket (embedq_worker/channel.py) rather than
        an HTTP request per call, if the server has it."""
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._identity = {
            "worker": name,
            "version": __version__,
            "models": models,
            "backend": backend,
            "host": platform.node(),
        }
        self._session: aiohttp.ClientSession | None = None
        self._raw_results = True  # until a server says it does not take RESULTS_TYPE
        self._use_channel = channel
        self._channel: Channel | None = None

    async def __aenter__(self) -> ServerClient:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        self._session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(limit=16, keepalive_timeout=60),
        )
        if self._use_channel:
            self._channel = Channel(self._session, self.base_url + CHANNEL_PATH, self._release_body)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._channel is not None:
            await self._channel.close()
        if self._session is not None:
            await self._session.close()

    @property
    def on_channel(self) -> bool:
        """Calls go on the worker channel (until the server turns out not to have one)."""
        return self._channel is not None

    async def _post(self, path: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        body = _json({**self._identity, **payload})
        return await self._send(path, body, "application/json", timeout)

    async def _send(
        self, path: str, body: bytes, content_type: str, timeout: float
    ) -> dict[str, Any]:
        assert self._session is not None, "use ServerClient as an async context manager"
        try:
            if self._channel is not None:
                try:
                    status, data = await self._channel.call(path.rsplit("/", 1)[1], body, timeout)
                    return _checked(path, status, data)
                except ChannelUnsupported as exc:
                    log.warning("worker channel refused (%s): calling the server over HTTP", exc)
                    await self._channel.close()
                    self._channel = None
            async with self._session.post(
                self.base_url + path,
                data=body,
                headers={"Content-Type": content_type},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                return _checked(path, resp.status, await resp.json(content_type=None))
        except (aiohttp.ClientError, ConnectionError, TimeoutError, ValueError) as exc:
            raise ServerError(f"{path}: {exc!r}") from exc

    async def claim(self, max_items: int, wait: float) -> Batch:
        data = await self._post(
            "/worker/claim", {"max_items": max_items, "wait_seconds": wait}, timeout=wait + 30
        )
        items = [Item(i["id"], i["input"], i["model"], i.get("dimensions")) for i in data["items"]]
        return Batch(data["lease"], float(data["lease_seconds"]), items)

    async def heartbeat(self, lease: str) -> int:
        data = await self._post("/worker/heartbeat", {"lease": lease}, timeout=15)
        return int(data["held"])

    async def complete(
        self,
        lease: str,
        results: list[tuple[int, bytes, int]],
        failures: list[ItemFailure],
        model_revision: str | None,
    ) -> dict[str, Any]:
        """Post a batch's results: raw float32 after a JSON line (RESULTS_TYPE), or base64
        in JSON for a server that does not take that (an older one answers 415)."""
        head: dict[str, Any] = {
            **self._identity,
            "lease": lease,
            "model_revision": model_revision,
            "failures": [
                {"id": f.id, "error": f.error, "code": f.code, "retry": f.retry} for f in failures
            ],
        }
        if self._raw_results or self._channel is not None:  # the channel takes raw results
            head["results"] = [{"id": i, "bytes": len(v), "tokens": t} for i, v, t in results]
            body = b"".join([_json(head), b"\n", *(v for _, v, _ in results)])
            try:
                return await self._send("/worker/complete", body, RESULTS_TYPE, timeout=60)
            except Unsupported as exc:
                log.warning("the server takes no raw results (%s): posting JSON from now", exc)
                self._raw_results = False
        head["results"] = [
            {"id": i, "embedding": base64.b64encode(v).decode("ascii"), "tokens": t}
            for i, v, t in results
        ]
        return await self._send("/worker/complete", _json(head), "application/json", 60)

    def _release_body(self, claimed: dict[str, Any]) -> bytes:
        """A hand-back of everything a claim's answer (`claimed`) leased."""
        ids = [item["id"] for item in claimed["items"]]
        return _json({**self._identity, "lease": claimed["lease"], "ids": ids})

    async def release(self, lease: str, ids: list[int]) -> list[int]:
        data = await self._post("/worker/release", {"lease": lease, "ids": ids}, timeout=15)
        return list(data["released"])


def _checked(path: str, status: int, data: Any) -> dict[str, Any]:
    """The answer, or the exception its status means."""
    if status == 409:
        raise LeaseLost(_message(data))
    if status == 415:
        raise Unsupported(f"{path}: HTTP 415: {_message(data)}")
    if status >= 500 or status == 429:
        raise ServerError(f"{path}: HTTP {status}: {_message(data)}")
    if status >= 400:
        raise Rejected(f"{path}: HTTP {status}: {_message(data)}")
    if not isinstance(data, dict):
        raise ServerError(f"{path}: HTTP {status}: not a JSON object: {str(data)[:300]}")
    return data


def _json(value: Any) -> bytes:
    """JSON bytes; a backend's error text with a lone surrogate (which orjson refuses) is
    escaped by the standard library instead of costing the batch its results."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value).encode("ascii")


def _message(data: Any) -> str:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message"))
    return str(data)[:300]
