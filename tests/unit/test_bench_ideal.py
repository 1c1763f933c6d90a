"""The ideal batchers (bench/ideal.py, bench/ideal_pull.py) against the real Ollama double:
the yardsticks the idle and 32-client targets are read against must answer every text with
its own vector and batch the texts that wait, or their figures mean nothing."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from bench.ideal import Batcher, create_app
from bench.ideal_pull import PULLERS, Delays, PullQueue, create_pull_app, pull
from tests.doubles.ollama import run_ollama_double
from tests.doubles.vectors import expected_bytes

MODEL = "nomic-embed-text"
DIM = 16
ClientFactory = Callable[..., Awaitable[TestClient]]


async def _post(client: TestClient, texts: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/embeddings", json={"model": MODEL, "input": texts})
    return resp.status, await resp.json()


@pytest.mark.parametrize("mode", ["greedy", "oracle"])
async def test_every_text_gets_its_vector_and_waiting_texts_share_calls(
    aiohttp_client: ClientFactory, mode: str
) -> None:
    # 30 ms per call: the first call computes while the other requests arrive.
    async with (
        run_ollama_double(dim=DIM, fixed_ms=30, per_text_ms=1) as url,
        Batcher(url, mode=mode, lead_ms=20) as batcher,
    ):
        client = await aiohttp_client(create_app(batcher))
        texts = [f"text {n}" for n in range(12)]
        answers = await asyncio.gather(
            _post(client, texts[0]), *(_post(client, [t]) for t in texts[1:10]),
            _post(client, texts[10:]),
        )  # fmt: skip
        got = [item["embedding"] for status, body in answers for item in body["data"]]
        assert all(status == 200 for status, _ in answers)
        assert got == [base64.b64encode(expected_bytes(MODEL, t, dim=DIM)).decode() for t in texts]
        assert sum(batcher.call_sizes) == len(texts)
        assert len(batcher.call_sizes) < len(texts)  # texts that waited went together
        assert max(batcher.call_sizes) > 1


async def test_a_failed_call_fails_its_requests_and_the_next_call_works(
    aiohttp_client: ClientFactory,
) -> None:
    async with (
        run_ollama_double(dim=DIM) as url,
        Batcher(url, mode="oracle") as batcher,
    ):
        client = await aiohttp_client(create_app(batcher))
        async with aiohttp.ClientSession() as session:
            await session.post(f"{url}/_control", json={"fail_next": 1, "status": 500})
        status, body = await _post(client, ["lost"])
        assert status == 502 and "500" in body["error"]["message"]
        status, body = await _post(client, "kept")
        assert status == 200
        vector = base64.b64encode(expected_bytes(MODEL, "kept", dim=DIM)).decode()
        assert body["data"][0]["embedding"] == vector


async def test_bad_input_and_mode_are_refused(aiohttp_client: ClientFactory) -> None:
    with pytest.raises(ValueError, match="mode"):
        Batcher("http://127.0.0.1:1", mode="eager")
    async with Batcher("http://127.0.0.1:1") as batcher:
        client = await aiohttp_client(create_app(batcher))
        for bad in ([], [1], None):
            status, body = await _post(client, bad)
            assert status == 400 and "input" in body["error"]["message"]
        assert batcher.call_sizes == []


@pytest.mark.parametrize(
    ("mode", "delays"),
    [(mode, Delays()) for mode in PULLERS] + [("timed", Delays.parse("2,3,4", busy_ms=0.1))],
)
async def test_the_pull_shape_answers_through_its_puller(
    aiohttp_server: Any, mode: str, delays: Delays
) -> None:
    """bench/ideal_pull.py: requests reach the double only through the puller's claims,
    and come back with their own vectors; a failed call fails only its requests. So with
    either puller, and with the delays bench/chain.py makes the server pay."""
    async with run_ollama_double(dim=DIM, fixed_ms=30, per_text_ms=1) as url:
        queue = PullQueue(delays=delays)
        server = await aiohttp_server(create_pull_app(queue))
        puller = asyncio.create_task(pull(str(server.make_url("")).rstrip("/"), url, mode))
        try:
            async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as session:

                async def post(texts: Any) -> tuple[int, dict[str, Any]]:
                    resp = await session.post("/v1/embeddings", json={"input": texts})
                    return resp.status, await resp.json()

                texts = [f"pulled {n}" for n in range(9)]
                answers = await asyncio.gather(*(post(t) for t in texts))
                got = [body["data"][0]["embedding"] for _, body in answers]
                assert got == [
                    base64.b64encode(expected_bytes(MODEL, t, dim=DIM)).decode() for t in texts
                ]
                stats = await (await session.get(f"{url}/_stats")).json()
                assert stats["texts"] == len(texts) and stats["calls"] < len(texts)

                await session.post(f"{url}/_control", json={"fail_next": 1, "status": 500})
                status, body = await post("lost")
                assert status == 502 and "500" in body["error"]["message"]
                status, _ = await post("kept")
                assert status == 200
        finally:
            puller.cancel()
            await asyncio.gather(puller, return_exceptions=True)
    # With nothing pending a claim waits, then comes back empty.
    assert await PullQueue().claim(wait=0.01) == []


def test_the_delays_read_as_milliseconds_in_order() -> None:
    assert Delays.parse("2,3,4.5", busy_ms=0.2) == Delays(0.002, 0.003, 0.0045, 0.0002)
    assert Delays.parse("1") == Delays(insert=0.001)
    assert Delays.parse("") == Delays()
    for bad in ("1,2,3,4", "-1", "x"):
        with pytest.raises(ValueError):
            Delays.parse(bad)
