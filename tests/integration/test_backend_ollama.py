"""The Ollama backend against the Ollama double: one call per batch, exact vectors, errors
mapped for the runner, and several instances sharing the load and covering for a dead one."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from embedq_worker.backends import ollama as ollama_module
from embedq_worker.backends.base import BackendUnavailable, InputRejected, ModelNotFound
from embedq_worker.backends.ollama import OllamaBackend
from tests.doubles.common import control, stats
from tests.doubles.ollama import model_digest, run_ollama_double
from tests.doubles.vectors import expected_bytes, fake_token_count

DIM = 32
MODEL = "nomic-embed-text"
TEXTS = ["the first text", "a second, longer text of the batch", "3"]


def closed_port_url() -> str:
    """An address where nothing listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def ollama() -> AsyncIterator[str]:
    async with run_ollama_double(dim=DIM, context_chars=100) as url:
        yield url


@pytest.fixture
async def backend(ollama: str) -> AsyncIterator[OllamaBackend]:
    backend = OllamaBackend([ollama], timeout=5.0)
    await backend.start([MODEL])
    yield backend
    await backend.close()


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ollama_module, "BACKOFF_MIN", 0.05)


async def test_a_batch_is_one_call_with_a_list_input(backend: OllamaBackend, ollama: str) -> None:
    result = await backend.embed(MODEL, TEXTS, None)
    assert result.vectors == [expected_bytes(MODEL, t, None, DIM) for t in TEXTS]
    assert sum(result.tokens) == sum(map(fake_token_count, TEXTS))  # prompt_eval_count, split
    assert result.tokens[1] > result.tokens[2]
    assert result.model_revision == model_digest(MODEL)
    counted = await stats(ollama)
    assert counted["batch_sizes"] == [3]
    assert counted["last_request"] == {
        "model": MODEL,
        "truncate": False,
        "keep_alive": "30m",
        "n_inputs": 3,
    }


async def test_dimensions_are_passed_on(backend: OllamaBackend, ollama: str) -> None:
    result = await backend.embed(MODEL, TEXTS[:1], 8)
    assert result.vectors == [expected_bytes(MODEL, TEXTS[0], 8, DIM)]
    assert (await stats(ollama))["last_request"]["dimensions"] == 8


async def test_start_reports_digests_and_accepts_tagged_names(ollama: str) -> None:
    backend = OllamaBackend([ollama])
    try:
        info = await backend.start([MODEL, "all-minilm:latest"])
    finally:
        await backend.close()
    assert info.name == "ollama" and info.endpoint == ollama
    assert info.models == {
        MODEL: model_digest(MODEL),
        "all-minilm:latest": model_digest("all-minilm"),
    }


async def test_a_model_missing_at_start_says_to_pull_it(ollama: str) -> None:
    backend = OllamaBackend([ollama])
    try:
        with pytest.raises(ModelNotFound, match="ollama pull mxbai-embed-large"):
            await backend.start(["mxbai-embed-large"])
    finally:
        await backend.close()


async def test_an_ollama_without_models_is_model_not_found_at_start() -> None:
    async with run_ollama_double(dim=DIM, models=[]) as url:
        backend = OllamaBackend([url])
        try:
            with pytest.raises(ModelNotFound, match=f"ollama pull {MODEL}"):
                await backend.start([MODEL])
        finally:
            await backend.close()


async def test_an_unknown_model_at_embed_time_is_model_not_found(backend: OllamaBackend) -> None:
    with pytest.raises(ModelNotFound, match="ollama pull"):
        await backend.embed("mxbai-embed-large", TEXTS, None)


async def test_an_input_over_the_context_is_rejected(backend: OllamaBackend) -> None:
    with pytest.raises(InputRejected, match="context length"):
        await backend.embed(MODEL, ["short", "x" * 101], None)


@pytest.mark.parametrize("status", [503, 500, 502])
async def test_busy_and_server_errors_are_unavailable(
    backend: OllamaBackend, ollama: str, status: int
) -> None:
    await control(ollama, fail_next=1, status=status)
    with pytest.raises(BackendUnavailable, match=str(status)):
        await backend.embed(MODEL, TEXTS, None)


async def test_a_dropped_connection_is_unavailable(backend: OllamaBackend, ollama: str) -> None:
    await control(ollama, down=True)
    with pytest.raises(BackendUnavailable):
        await backend.embed(MODEL, TEXTS, None)


async def test_a_slow_instance_times_out_as_unavailable(ollama: str) -> None:
    backend = OllamaBackend([ollama], timeout=0.2)
    await backend.start([MODEL])
    try:
        await control(ollama, delay_ms=1000)
        with pytest.raises(BackendUnavailable):
            await backend.embed(MODEL, TEXTS, None)
    finally:
        await backend.close()


async def test_start_survives_an_unreachable_ollama_and_calls_recover(quick_backoff: None) -> None:
    """The worker starts while Ollama is down; calls fail as retryable until it is up."""
    async with run_ollama_double(dim=DIM) as url:
        pass  # the double is gone: its port now refuses connections
    backend = OllamaBackend([url])
    try:
        info = await backend.start([MODEL])
        assert info.models == {MODEL: None}
        with pytest.raises(BackendUnavailable):
            await backend.embed(MODEL, TEXTS, None)
        port = int(url.rsplit(":", 1)[1])
        async with run_ollama_double(dim=DIM, port=port):
            await asyncio.sleep(0.3)  # past the instance's rest
            result = await backend.embed(MODEL, TEXTS, None)
        assert result.vectors[0] == expected_bytes(MODEL, TEXTS[0], None, DIM)
    finally:
        await backend.close()


async def test_concurrent_calls_spread_over_instances() -> None:
    async with (
        run_ollama_double(dim=DIM, fixed_ms=30) as first,
        run_ollama_double(dim=DIM, fixed_ms=30) as second,
    ):
        backend = OllamaBackend([first, second])
        assert backend.concurrency == 2
        await backend.start([MODEL])
        try:
            texts = [[f"call {i} text {j}" for j in range(4)] for i in range(8)]
            results = await asyncio.gather(*(backend.embed(MODEL, t, None) for t in texts))
        finally:
            await backend.close()
        for batch, result in zip(texts, results, strict=True):
            assert result.vectors == [expected_bytes(MODEL, t, None, DIM) for t in batch]
        assert (await stats(first))["calls"] == 4
        assert (await stats(second))["calls"] == 4


async def test_one_dead_instance_does_not_stop_the_others(quick_backoff: None) -> None:
    async with run_ollama_double(dim=DIM) as alive, run_ollama_double(dim=DIM) as dying:
        backend = OllamaBackend([closed_port_url(), dying, alive])
        info = await backend.start([MODEL])
        assert info.models[MODEL] == model_digest(MODEL)
        try:
            await control(dying, down=True)
            results = await asyncio.gather(
                *(backend.embed(MODEL, [f"text {i}"], None) for i in range(6))
            )
            assert [r.vectors[0] for r in results] == [
                expected_bytes(MODEL, f"text {i}", None, DIM) for i in range(6)
            ]
            assert (await stats(alive))["calls"] == 6
            await control(dying, down=False)
            await asyncio.sleep(0.5)  # past the rest: the instance is tried again
            await asyncio.gather(*(backend.embed(MODEL, ["again"], None) for _ in range(4)))
            assert (await stats(dying))["calls"] > 0
        finally:
            await backend.close()


async def test_no_instance_up_is_unavailable() -> None:
    backend = OllamaBackend([closed_port_url(), closed_port_url()])
    try:
        await backend.start([MODEL])
        with pytest.raises(BackendUnavailable):
            await backend.embed(MODEL, TEXTS, None)
    finally:
        await backend.close()


async def test_calls_go_only_to_instances_that_have_the_model() -> None:
    async with (
        run_ollama_double(dim=DIM, models=["all-minilm"]) as without,
        run_ollama_double(dim=DIM, models=[MODEL]) as having,
    ):
        backend = OllamaBackend([without, having])
        try:
            await backend.start([MODEL])
            await asyncio.gather(*(backend.embed(MODEL, ["x"], None) for _ in range(4)))
        finally:
            await backend.close()
        assert (await stats(without))["calls"] == 0
        assert (await stats(having))["calls"] == 4


async def test_a_model_found_nowhere_at_embed_time_is_model_not_found() -> None:
    async with run_ollama_double(dim=DIM) as first, run_ollama_double(dim=DIM) as second:
        backend = OllamaBackend([first, second])
        try:
            await backend.start([])
            with pytest.raises(ModelNotFound):
                await backend.embed("mxbai-embed-large", ["x"], None)
            with pytest.raises(ModelNotFound):  # and again, without asking
                await backend.embed("mxbai-embed-large", ["x"], None)
        finally:
            await backend.close()
