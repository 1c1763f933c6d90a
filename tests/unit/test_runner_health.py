"""The worker's watchdog check: a backend call running far past its timeout is wedged."""

from __future__ import annotations

import asyncio
from typing import Any

from embedq_worker.backends.base import BackendInfo, EmbedResult
from embedq_worker.runner import Runner
from embedq_worker.server_client import Batch, Item
from embedq_worker.settings import WorkerSettings


class HangingBackend:
    name = "hanging"
    concurrency = 1

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def start(self, models: list[str]) -> BackendInfo:
        return BackendInfo(self.name, "nowhere")

    async def embed(self, model: str, texts: list[str], dimensions: int | None) -> EmbedResult:
        await self.release.wait()
        return EmbedResult(vectors=[b"\0\0\0\0"] * len(texts), tokens=[1] * len(texts))

    async def close(self) -> None:
        pass


async def test_a_wedged_backend_call_makes_the_worker_unhealthy() -> None:
    backend = HangingBackend()
    runner = Runner(WorkerSettings(request_timeout=0.05), client=Any, backends={"m": backend})  # type: ignore[arg-type]
    batch = Batch("lease", 60.0, [Item(1, "text", "m", None)])
    assert await runner.healthy()
    computing = asyncio.create_task(runner._compute(backend, batch, batch.items))
    await asyncio.sleep(0.3)  # past twice the request timeout
    assert not await runner.healthy()
    backend.release.set()
    outcome = await computing
    assert [r[0] for r in outcome.results] == [1]
    assert await runner.healthy()
