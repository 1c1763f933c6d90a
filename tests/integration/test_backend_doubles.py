"""The test doubles speak the real APIs: Ollama's fields and errors, OpenAI's envelope, and
the test-only switches (/_control, /_stats) and process mode."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.doubles.common import control, spawn_double, stats
from tests.doubles.ollama import BUSY_ERROR, model_digest, run_ollama_double
from tests.doubles.openai_compat import run_openai_double
from tests.doubles.vectors import expected_bytes, fake_token_count

DIM = 16


def packed(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None, **kw: Any
) -> tuple[int, Any]:
    async with http.request(method, url, json=body, **kw) as resp:
        return resp.status, await resp.json()


@pytest.fixture
async def ollama() -> AsyncIterator[str]:
    async with run_ollama_double(dim=DIM, context_chars=40) as url:
        yield url


async def test_ollama_embed_answers_with_ollamas_fields(
    ollama: str, http: aiohttp.ClientSession
) -> None:
    texts = ["first text", "second"]
    status, body = await call(
        http, "POST", f"{ollama}/api/embed", {"model": "nomic-embed-text", "input": texts}
    )
    assert status == 200
    assert set(body) == {
        "model",
        "embeddings",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
    }
    assert body["model"] == "nomic-embed-text"
    assert [packed(v) for v in body["embeddings"]] == [
        expected_bytes("nomic-embed-text", t, None, DIM) for t in texts
    ]
    assert body["prompt_eval_count"] == sum(map(fake_token_count, texts))
    assert isinstance(body["total_duration"], int) and body["total_duration"] > 0
    assert body["load_duration"] > 0  # the first call loads the model
    _, again = await call(http, "POST", f"{ollama}/api/embed", {"model": "nomic-embed-text"})
    assert again == {"model": "nomic-embed-text", "embeddings": []}


async def test_ollama_embed_options_and_errors(ollama: str, http: aiohttp.ClientSession) -> None:
    url = f"{ollama}/api/embed"
    _, body = await call(http, "POST", url, {"model": "all-minilm", "input": "x", "dimensions": 4})
    assert packed(body["embeddings"][0]) == expected_bytes("all-minilm", "x", 4, DIM)
    long = "y" * 100
    _, body = await call(http, "POST", url, {"model": "all-minilm", "input": long})
    assert packed(body["embeddings"][0]) == expected_bytes("all-minilm", long[:40], None, DIM)
    assert await call(
        http, "POST", url, {"model": "all-minilm", "input": long, "truncate": False}
    ) == (
        400,
        {"error": "the input length exceeds the context length"},
    )
    assert await call(http, "POST", url, {"model": "nope", "input": "x"}) == (
        404,
        {"error": "model 'nope' not found"},
    )
    status, body = await call(http, "POST", url, {"model": "all-minilm", "input": ["a", 3]})
    assert status == 400 and "error" in body


async def test_ollama_model_endpoints(ollama: str, http: aiohttp.ClientSession) -> None:
    _, tags = await call(http, "GET", f"{ollama}/api/tags")
    names = [m["name"] for m in tags["models"]]
    assert names == ["nomic-embed-text:latest", "all-minilm:latest"]
    first = tags["models"][0]
    assert {"name", "model", "digest", "size", "details"} <= set(first)
    assert first["digest"] == model_digest("nomic-embed-text")
    _, show = await call(http, "POST", f"{ollama}/api/show", {"model": "nomic-embed-text"})
    assert show["capabilities"] == ["embedding"]
    arch = show["model_info"]["general.architecture"]
    assert show["model_info"][f"{arch}.embedding_length"] == DIM
    assert f"{arch}.context_length" in show["model_info"]
    assert (await call(http, "POST", f"{ollama}/api/show", {"model": "x"}))[0] == 404
    assert (await call(http, "GET", f"{ollama}/api/version"))[1]["version"]
    assert (await call(http, "GET", f"{ollama}/api/ps"))[1] == {"models": []}
    await call(http, "POST", f"{ollama}/api/embed", {"model": "all-minilm", "input": "x"})
    _, ps = await call(http, "GET", f"{ollama}/api/ps")
    assert [m["name"] for m in ps["models"]] == ["all-minilm:latest"]
    _, legacy = await call(
        http, "POST", f"{ollama}/api/embeddings", {"model": "all-minilm", "prompt": "x"}
    )
    assert packed(legacy["embedding"]) == expected_bytes("all-minilm", "x", None, DIM)


async def test_control_injects_failures_and_stats_count_calls(
    ollama: str, http: aiohttp.ClientSession
) -> None:
    url = f"{ollama}/api/embed"
    request = {"model": "all-minilm", "input": ["a", "b", "c"], "keep_alive": "1m"}
    await control(ollama, fail_next=2, status=503)
    assert await call(http, "POST", url, request) == (503, {"error": BUSY_ERROR})
    await control(ollama, status=500)
    assert (await call(http, "POST", url, request))[0] == 500
    assert (await call(http, "POST", url, request))[0] == 200
    counted = await stats(ollama)
    assert counted["calls"] == 1 and counted["failed"] == 2
    assert counted["batch_sizes"] == [3] and counted["max_batch"] == 3 and counted["texts"] == 3
    assert counted["last_request"] == {"model": "all-minilm", "keep_alive": "1m", "n_inputs": 3}
    await control(ollama, down=True)
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(http, "POST", url, request)
    await control(ollama, down=False, reset_stats=True)
    assert (await call(http, "POST", url, request))[0] == 200
    assert (await stats(ollama))["calls"] == 1


async def test_gpu_mode_computes_one_call_at_a_time_and_refuses_past_the_queue(
    http: aiohttp.ClientSession,
) -> None:
    async with run_ollama_double(dim=DIM, fixed_ms=150, per_text_ms=10, max_queue=1) as url:
        request = {"model": "all-minilm", "input": ["a", "b"]}
        started = time.perf_counter()
        results = await asyncio.gather(
            *(call(http, "POST", f"{url}/api/embed", request) for _ in range(3))
        )
        elapsed = time.perf_counter() - started
        assert sorted(status for status, _ in results) == [200, 200, 503]
        assert elapsed >= 2 * 0.170  # two calls of 150 + 2 * 10 ms, one after the other
        counted = await stats(url)
        assert counted["calls"] == 2 and counted["busy"] == 1 and counted["max_concurrent"] == 3


async def test_openai_double_speaks_the_embeddings_api(http: aiohttp.ClientSession) -> None:
    async with run_openai_double(dim=DIM, api_key="sk-test") as base:
        auth = {"Authorization": "Bearer sk-test"}
        url = f"{base}/embeddings"
        request = {"model": "nomic-embed-text", "input": ["a b", "c"], "encoding_format": "base64"}
        status, body = await call(http, "POST", url, request, headers=auth)
        assert status == 200
        assert body["object"] == "list" and body["model"] == "nomic-embed-text"
        assert [d["index"] for d in body["data"]] == [0, 1]
        assert [base64.b64decode(d["embedding"]) for d in body["data"]] == [
            expected_bytes("nomic-embed-text", t, None, DIM) for t in ["a b", "c"]
        ]
        tokens = fake_token_count("a b") + fake_token_count("c")
        assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
        _, floats = await call(
            http,
            "POST",
            url,
            {"model": "nomic-embed-text", "input": "c", "dimensions": 4},
            headers=auth,
        )
        assert packed(floats["data"][0]["embedding"]) == expected_bytes(
            "nomic-embed-text", "c", 4, DIM
        )

        status, body = await call(http, "POST", url, request)
        assert status == 401
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["type"] == "authentication_error"
        status, body = await call(http, "POST", url, request | {"model": "x"}, headers=auth)
        assert status == 404 and body["error"]["code"] == "model_not_found"
        for bad in ({"input": ""}, {"input": [1, 2]}, {"dimensions": DIM + 1}):
            status, body = await call(http, "POST", url, request | bad, headers=auth)
            assert status == 400 and body["error"]["type"] == "invalid_request_error"
        _, models = await call(http, "GET", f"{base}/models", headers=auth)
        assert [m["id"] for m in models["data"]] == ["text-embedding-3-small", "nomic-embed-text"]


async def test_openai_double_can_ignore_base64_and_lack_a_model_list(
    http: aiohttp.ClientSession,
) -> None:
    async with run_openai_double(dim=DIM, float_only=True, models_endpoint=False) as base:
        request = {"model": "nomic-embed-text", "input": "a", "encoding_format": "base64"}
        _, body = await call(http, "POST", f"{base}/embeddings", request)
        assert packed(body["data"][0]["embedding"]) == expected_bytes(
            "nomic-embed-text", "a", None, DIM
        )
        async with http.get(f"{base}/models") as resp:
            assert resp.status == 404


@pytest.mark.parametrize(
    ("module", "path"),
    [("tests.doubles.ollama", "/api/version"), ("tests.doubles.openai_compat", "/v1/models")],
)
async def test_doubles_run_as_processes(
    module: str, path: str, http: aiohttp.ClientSession
) -> None:
    with spawn_double(module, "--dim", "8", "--fixed-ms", "1") as url:
        assert url.startswith("http://127.0.0.1:")
        async with http.get(f"{url}{path}") as resp:
            assert resp.status == 200
