"""End to end through the official OpenAI SDK and LangChain, against the real server and
worker processes and an Ollama double."""

from __future__ import annotations

import base64
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from embedq_server import tokens
from tests.doubles.vectors import expected_vector
from tests.e2e.procs import Proc
from tests.helpers import CLIENT_TOKEN

MODEL = "nomic-embed-text"


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))


@pytest.fixture
def sdk(server: Proc, worker: Proc) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key=CLIENT_TOKEN, max_retries=0) as c:
        yield c


def test_single_string_with_sdk_default_base64(sdk: openai.OpenAI) -> None:
    resp = sdk.embeddings.create(model=MODEL, input="hello world")
    assert len(resp.data) == 1
    assert close(resp.data[0].embedding, expected_vector(MODEL, "hello world"))
    assert resp.usage.prompt_tokens > 0
    assert resp.model == MODEL


def test_list_keeps_input_order(sdk: openai.OpenAI) -> None:
    texts = [f"document number {i}" for i in range(50)]
    resp = sdk.embeddings.create(model=MODEL, input=texts)
    assert [d.index for d in resp.data] == list(range(50))
    for text, item in zip(texts, resp.data, strict=True):
        assert close(item.embedding, expected_vector(MODEL, text))


def test_float_format_and_dimensions(sdk: openai.OpenAI) -> None:
    resp = sdk.embeddings.create(
        model=MODEL, input=["a", "b"], encoding_format="float", dimensions=64
    )
    assert [len(d.embedding) for d in resp.data] == [64, 64]
    assert close(resp.data[1].embedding, expected_vector(MODEL, "b", 64))


def test_raw_base64_is_little_endian_float32(server: Proc, worker: Proc) -> None:
    with openai.OpenAI(base_url=server.url + "/v1", api_key=CLIENT_TOKEN, max_retries=0) as c:
        raw = c.embeddings.with_raw_response.create(
            model=MODEL, input="raw", encoding_format="base64"
        )
    body = raw.http_response.json()
    data = base64.b64decode(body["data"][0]["embedding"])
    assert close(list(struct.unpack(f"<{len(data) // 4}f", data)), expected_vector(MODEL, "raw"))


def test_token_arrays_give_the_vectors_of_their_text(sdk: openai.OpenAI) -> None:
    texts = ["hello world", "second doc"]
    ids = [tokens.encode(t) for t in texts]
    assert ids[0] == [15339, 1917]
    resp = sdk.embeddings.create(model=MODEL, input=ids)
    for text, item in zip(texts, resp.data, strict=True):
        assert close(item.embedding, expected_vector(MODEL, text))
    single = sdk.embeddings.create(model=MODEL, input=ids[0])
    assert close(single.data[0].embedding, expected_vector(MODEL, "hello world"))


def test_out_of_vocabulary_token_is_a_400_naming_input(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk.embeddings.create(model=MODEL, input=[[15339, 10**7]])
    assert err.value.body["param"] == "input"  # type: ignore[index]


def test_unknown_model_fails_clearly(sdk: openai.OpenAI) -> None:
    # The worker serves only nomic-embed-text: a model nobody serves waits, then the SDK
    # gets a retryable error naming the task (not a body without data).
    client = sdk.with_options(timeout=30)
    with pytest.raises(openai.APIStatusError) as err:
        client.embeddings.create(model="not-served", input="x", extra_body={})
    assert err.value.status_code == 503
    assert "task" in str(err.value.message)


def test_langchain_default_sends_token_ids(server: Proc, worker: Proc, tmp_path: Path) -> None:
    from langchain_openai import OpenAIEmbeddings

    # tiktoken's cache, pointed at the offline file (named by the SHA-1 of its URL).
    cache = tmp_path / "tiktoken"
    cache.mkdir()
    shutil.copy(tokens.encoding_file(), cache / "9b5ad71b2ce5302211f9c61530b329a4922fc6a4")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    http_client = httpx.Client()
    try:
        emb = OpenAIEmbeddings(
            model=MODEL,
            base_url=server.url + "/v1",
            api_key=CLIENT_TOKEN,  # type: ignore[arg-type]
            max_retries=0,
            http_client=http_client,
        )
        docs = ["hello world", "second doc", "a third, longer document about embeddings"]
        vectors = emb.embed_documents(docs)
        query = emb.embed_query("hello world")
    finally:
        http_client.close()
        del os.environ["TIKTOKEN_CACHE_DIR"]
    for text, vector in zip(docs, vectors, strict=True):
        assert close(vector, expected_vector(MODEL, text))
    assert close(query, expected_vector(MODEL, "hello world"))
