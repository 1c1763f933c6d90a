"""The OpenAI-compatible backend against the OpenAI double: base64 or floats, API keys, and
errors in OpenAI's envelope or the flat bodies other servers send."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from embedq_worker.backends.base import BackendUnavailable, InputRejected, ModelNotFound
from embedq_worker.backends.openai import AuthenticationFailed, OpenAIBackend
from tests.doubles.common import control, serve, stats
from tests.doubles.openai_compat import run_openai_double
from tests.doubles.vectors import expected_bytes, fake_token_count

DIM = 24
MODEL = "text-embedding-3-small"
KEY = "sk-test"
TEXTS = ["one text", "and a second, longer one", "3"]


def root(base_url: str) -> str:
    """The double's root, where /_control and /_stats live."""
    return base_url.removesuffix("/v1")


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async with run_openai_double(dim=DIM, api_key=KEY) as base_url:
        yield base_url


@pytest.fixture
async def backend(server: str) -> AsyncIterator[OpenAIBackend]:
    backend = OpenAIBackend(server, KEY, timeout=5.0)
    await backend.start([MODEL])
    yield backend
    await backend.close()


async def test_base64_vectors_arrive_as_the_stored_bytes(
    backend: OpenAIBackend, server: str
) -> None:
    result = await backend.embed(MODEL, TEXTS, None)
    assert result.vectors == [expected_bytes(MODEL, t, None, DIM) for t in TEXTS]
    assert sum(result.tokens) == sum(map(fake_token_count, TEXTS))
    counted = await stats(root(server))
    assert counted["batch_sizes"] == [3]
    assert counted["last_request"] == {"model": MODEL, "encoding_format": "base64", "n_inputs": 3}


async def test_dimensions_are_passed_on(backend: OpenAIBackend) -> None:
    result = await backend.embed(MODEL, TEXTS[:1], 6)
    assert result.vectors == [expected_bytes(MODEL, TEXTS[0], 6, DIM)]


async def test_a_server_that_answers_floats_gives_the_same_bytes() -> None:
    async with run_openai_double(dim=DIM, float_only=True, models_endpoint=False) as base_url:
        backend = OpenAIBackend(base_url)
        try:
            info = await backend.start([MODEL, "not-listed-anywhere"])  # no list: not checked
            result = await backend.embed(MODEL, TEXTS, None)
        finally:
            await backend.close()
    assert info.models == {MODEL: None, "not-listed-anywhere": None}
    assert result.vectors == [expected_bytes(MODEL, t, None, DIM) for t in TEXTS]


async def test_a_refused_key_stops_start_and_is_not_retryable(server: str) -> None:
    backend = OpenAIBackend(server, "sk-wrong")
    try:
        with pytest.raises(AuthenticationFailed, match="Incorrect API key"):
            await backend.start([MODEL])
        with pytest.raises(AuthenticationFailed) as caught:
            await backend.embed(MODEL, TEXTS, None)
        assert caught.value.retryable is False
    finally:
        await backend.close()


async def test_a_model_the_server_does_not_list_is_not_found_at_start(server: str) -> None:
    backend = OpenAIBackend(server, KEY)
    try:
        with pytest.raises(ModelNotFound, match="e5-large"):
            await backend.start(["e5-large"])
    finally:
        await backend.close()


async def test_errors_in_the_envelope_map_for_the_runner(
    backend: OpenAIBackend, server: str
) -> None:
    with pytest.raises(ModelNotFound, match="does not exist"):
        await backend.embed("e5-large", TEXTS, None)
    with pytest.raises(InputRejected, match="empty"):
        await backend.embed(MODEL, ["fine", ""], None)
    with pytest.raises(InputRejected, match="dimensions"):
        await backend.embed(MODEL, TEXTS, DIM + 1)
    for status in (429, 500, 503):
        await control(root(server), fail_next=1, status=status)
        with pytest.raises(BackendUnavailable, match=str(status)):
            await backend.embed(MODEL, TEXTS, None)
    await control(root(server), down=True)
    with pytest.raises(BackendUnavailable):
        await backend.embed(MODEL, TEXTS, None)


async def test_flat_error_bodies_of_other_servers_are_read() -> None:
    """TEI answers `{"error": "...", "error_type": ...}`, vLLM once `{"message": ...}`."""

    async def tei(request: web.Request) -> web.Response:
        body = {
            "error": "batch size 64 > maximum allowed batch size 32",
            "error_type": "Validation",
        }
        return web.json_response(body, status=413)

    async def vllm(request: web.Request) -> web.Response:
        return web.json_response({"object": "error", "message": "no such model"}, status=404)

    app = web.Application()
    app.router.add_post("/tei/embeddings", tei)
    app.router.add_post("/vllm/embeddings", vllm)
    async with serve(app) as url:
        tei_backend, vllm_backend = OpenAIBackend(f"{url}/tei"), OpenAIBackend(f"{url}/vllm")
        try:
            await tei_backend.start([MODEL])
            await vllm_backend.start([MODEL])
            with pytest.raises(InputRejected, match="maximum allowed batch size"):
                await tei_backend.embed(MODEL, TEXTS, None)
            with pytest.raises(ModelNotFound, match="no such model"):
                await vllm_backend.embed(MODEL, TEXTS, None)
        finally:
            await tei_backend.close()
            await vllm_backend.close()


async def test_an_unreachable_server_is_unavailable_not_fatal() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    backend = OpenAIBackend(base_url, KEY)
    try:
        info = await backend.start([MODEL])
        assert info.endpoint == base_url
        with pytest.raises(BackendUnavailable):
            await backend.embed(MODEL, TEXTS, None)
    finally:
        await backend.close()
