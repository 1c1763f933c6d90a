"""Hostile and careless requests, through HTTP against a real PostgreSQL: each answers a 4xx
in OpenAI's envelope, names the field at fault and says what is wrong. None is a 500.

The tables read as the contract: (what is sent, status, param, words the message holds).
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from embedq_server import queue as queue_module
from embedq_server.app import create_app
from embedq_server.keys import ADMISSION
from tests.conftest import TEMPLATE, with_database
from tests.helpers import CLIENT, WORKER, claim, make_settings, wait_until

EMBEDDINGS = "/v1/embeddings"
ENVELOPE_KEYS = {"message", "type", "param", "code"}
TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


async def error_of(resp: Any, status: int, param: str | None, *words: str) -> dict[str, Any]:
    """Assert the status and the envelope; return the error object."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json", text
    body = json.loads(text)
    assert set(body) == {"error"} or status == 409, body
    error: dict[str, Any] = body["error"]
    assert set(error) >= ENVELOPE_KEYS, error
    assert error["type"] == TYPES[status], error
    assert error["param"] == param, error
    assert isinstance(error["message"], str) and error["message"], error
    for word in words:
        assert word in error["message"], (word, error["message"])
    return error


def vec(*values: float) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


# The tables below need no state of their own: they share one server (and database) for
# the module, so hundreds of cases run in seconds. Tests that need settings or an empty
# queue use app_client, a server of their own.
shared_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(pg_url: str, template_url: str) -> AsyncIterator[TestClient]:
    name = "embedq_t_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    finally:
        await admin.close()
    client = TestClient(TestServer(create_app(make_settings(), with_database(pg_url, name))))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        admin = await asyncpg.connect(pg_url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


# -- the body as a whole -----------------------------------------------------------------

RAW_BODIES = [
    pytest.param(b'{"input": ', "not valid JSON", id="truncated-json"),
    pytest.param(b"", "not valid JSON", id="empty-body"),
    pytest.param(b"{'input': 'a'}", "not valid JSON", id="single-quotes"),
    pytest.param(b'{"input": "caf\xe9"}', "not valid UTF-8", id="latin-1-bytes"),
    pytest.param(b'{"input": "\xff\xfe"}', "not valid UTF-8", id="invalid-utf8"),
    pytest.param(b"[1, 2]", "must be a JSON object, not an array", id="array-body"),
    pytest.param(b'"hello"', "must be a JSON object, not a string", id="string-body"),
    pytest.param(b"null", "must be a JSON object, not null", id="null-body"),
    pytest.param(b"42", "must be a JSON object, not a number", id="number-body"),
    pytest.param(b'{"input": "a", "dimensions": NaN}', "NaN is not a JSON number", id="nan"),
    pytest.param(b'{"input": "a", "dimensions": -Infinity}', "-Infinity", id="infinity"),
    pytest.param(b'{"input": "a", "dimensions": 1e999}', "out of range", id="huge-float"),
    pytest.param(
        b'{"input": "a", "dimensions": ' + b"9" * 5000 + b"}", "too long", id="5000-digits"
    ),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested too deeply", id="nesting-100k"),
]


@shared_loop
@pytest.mark.parametrize(("body", "words"), RAW_BODIES)
async def test_unreadable_bodies(shared: TestClient, body: bytes, words: str) -> None:
    client = shared
    headers = {**CLIENT, "Content-Type": "application/json"}
    await error_of(await client.post(EMBEDDINGS, data=body, headers=headers), 400, None, words)


@shared_loop
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        "multipart/form-data; boundary=x",
    ],
)
async def test_a_body_not_sent_as_json_is_415(shared: TestClient, content_type: str) -> None:
    client = shared
    resp = await client.post(
        EMBEDDINGS, data=b'{"input": "a"}', headers={**CLIENT, "Content-Type": content_type}
    )
    error = await error_of(resp, 415, None, "Content-Type: application/json")
    assert error["code"] == "unsupported_media_type"


@shared_loop
@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/vnd.api+json", None]
)
async def test_json_content_types_and_none_are_accepted(
    shared: TestClient, content_type: str | None
) -> None:
    client = shared
    headers = dict(CLIENT)
    skip = []
    if content_type is None:
        skip = ["Content-Type"]
    else:
        headers["Content-Type"] = content_type
    resp = await client.post(
        EMBEDDINGS,
        data=b'{"input": "a", "model": "m", "wait_seconds": 0}',
        headers=headers,
        skip_auto_headers=skip,
    )
    assert resp.status == 202, await resp.text()


async def test_a_body_over_the_limit_is_413(app_client: Any) -> None:
    client = await app_client(max_body_bytes=1000)
    resp = await client.post(EMBEDDINGS, json={"input": "x" * 2000}, headers=CLIENT)
    error = await error_of(resp, 413, None, "too large", "1000")
    assert error["code"] == "request_too_large"
    small = await client.post(EMBEDDINGS, json={"input": "x", "wait_seconds": 0}, headers=CLIENT)
    assert small.status == 202


async def test_worker_bodies_obey_the_limit_too(app_client: Any) -> None:
    client = await app_client(max_body_bytes=1000)
    resp = await client.post(
        "/worker/complete",
        json={
            "worker": "w",
            "lease": str(uuid.uuid4()),
            "results": [{"id": 1, "embedding": "A" * 2000}],
        },
        headers=WORKER,
    )
    await error_of(resp, 413, None, "too large")


# -- POST /v1/embeddings, field by field -------------------------------------------------

TOO_LONG_MODEL = "m" * 257
FIELDS = [
    # input
    pytest.param({}, "input", "input is required", id="input-missing"),
    pytest.param({"input": None}, "input", "input is required", id="input-null"),
    pytest.param({"input": 5}, "input", "not a number", id="input-number"),
    pytest.param({"input": True}, "input", "not a boolean", id="input-bool"),
    pytest.param({"input": {"text": "a"}}, "input", "not an object", id="input-object"),
    pytest.param({"input": ""}, "input", "input[0] is an empty string", id="input-empty-string"),
    pytest.param(
        {"input": ["a", ""]}, "input", "input[1] is an empty string", id="input-empty-item"
    ),
    pytest.param({"input": []}, "input", "empty array", id="input-empty-array"),
    pytest.param({"input": ["a", 1]}, "input", "array of strings", id="mixed-string-int"),
    pytest.param({"input": [[1], "a"]}, "input", "array of strings", id="mixed-array-string"),
    pytest.param({"input": [1, [2]]}, "input", "array of strings", id="mixed-int-array"),
    pytest.param({"input": [None]}, "input", "array of strings", id="array-of-null"),
    pytest.param({"input": [True, False]}, "input", "array of strings", id="array-of-bools"),
    pytest.param(
        {"input": [["a"]]}, "input", "input[0] mixes token ids", id="array-of-string-arrays"
    ),
    pytest.param({"input": [[1, True]]}, "input", "input[0] mixes token ids", id="bool-token"),
    pytest.param({"input": [[1.5]]}, "input", "input[0] mixes token ids", id="fractional-token"),
    pytest.param(
        {"input": [[1], []]}, "input", "input[1] is an empty token array", id="empty-token-array"
    ),
    pytest.param({"input": [[[1]]]}, "input", "mixes token ids", id="nested-3-deep"),
    pytest.param({"input": [100256]}, "input", "100256 is not in the cl100k_base", id="token-gap"),
    pytest.param({"input": [-1]}, "input", "-1 is not in the cl100k_base", id="token-negative"),
    pytest.param(
        {"input": [[15339], [100277]]}, "input", "input[1]: token id 100277", id="token-past-end"
    ),
    pytest.param({"input": [10**30]}, "input", "is not in the cl100k_base", id="token-huge"),
    # text PostgreSQL cannot store
    pytest.param({"input": "a\u0000b"}, "input", "input[0] contains a NUL character", id="nul"),
    pytest.param({"input": ["ok", "\u0000"]}, "input", "input[1] contains a NUL", id="nul-second"),
    pytest.param({"input": [[188]]}, "input", "input[0] contains a NUL", id="nul-from-token-188"),
    # models
    pytest.param({"input": "a", "model": 5}, "model", "non-empty string", id="model-number"),
    pytest.param({"input": "a", "model": ""}, "model", "non-empty string", id="model-empty"),
    pytest.param({"input": "a", "model": " \t"}, "model", "non-empty string", id="model-blank"),
    pytest.param({"input": "a", "model": ["m"]}, "model", "non-empty string", id="model-array"),
    pytest.param({"input": "a", "model": TOO_LONG_MODEL}, "model", "at most 256", id="model-long"),
    pytest.param({"input": "a", "model": "m\u0000"}, "model", "NUL", id="model-nul"),
    # encoding_format
    pytest.param(
        {"input": "a", "encoding_format": "binary"},
        "encoding_format",
        "'float' or 'base64'",
        id="format-unknown",
    ),
    pytest.param(
        {"input": "a", "encoding_format": "FLOAT"},
        "encoding_format",
        "'float' or 'base64'",
        id="format-case",
    ),
    pytest.param(
        {"input": "a", "encoding_format": 1},
        "encoding_format",
        "'float' or 'base64'",
        id="format-number",
    ),
    pytest.param(
        {"input": "a", "encoding_format": ["float"]},
        "encoding_format",
        "'float'",
        id="format-array",
    ),
    pytest.param(
        {"input": "a", "encoding_format": {}}, "encoding_format", "'float'", id="format-object"
    ),
    # dimensions
    pytest.param({"input": "a", "dimensions": 0}, "dimensions", "from 1 to 65536", id="dims-zero"),
    pytest.param({"input": "a", "dimensions": -8}, "dimensions", "from 1 to", id="dims-negative"),
    pytest.param({"input": "a", "dimensions": 1.5}, "dimensions", "integer", id="dims-fraction"),
    pytest.param({"input": "a", "dimensions": "8"}, "dimensions", "integer", id="dims-string"),
    pytest.param({"input": "a", "dimensions": True}, "dimensions", "integer", id="dims-bool"),
    pytest.param(
        {"input": "a", "dimensions": 2**31}, "dimensions", "from 1 to", id="dims-past-int4"
    ),
    # user
    pytest.param({"input": "a", "user": 5}, "user", "user must be a string", id="user-number"),
    pytest.param({"input": "a", "user": {"id": 1}}, "user", "string", id="user-object"),
    # wait_seconds (embedq's extension)
    pytest.param(
        {"input": "a", "wait_seconds": -1}, "wait_seconds", "from 0 to 30", id="wait-negative"
    ),
    pytest.param(
        {"input": "a", "wait_seconds": 1.5}, "wait_seconds", "integer", id="wait-fraction"
    ),
    pytest.param(
        {"input": "a", "wait_seconds": 31}, "wait_seconds", "from 0 to 30", id="wait-too-long"
    ),
    pytest.param(
        {"input": "a", "wait_seconds": 10**20}, "wait_seconds", "from 0 to 30", id="wait-huge"
    ),
    pytest.param({"input": "a", "wait_seconds": "5"}, "wait_seconds", "integer", id="wait-string"),
    pytest.param({"input": "a", "wait_seconds": True}, "wait_seconds", "integer", id="wait-bool"),
    pytest.param({"input": "a", "wait_seconds": [1]}, "wait_seconds", "integer", id="wait-array"),
]


@shared_loop
@pytest.mark.parametrize(("body", "param", "words"), FIELDS)
async def test_each_field_is_checked(
    shared: TestClient, body: dict[str, Any], param: str, words: str
) -> None:
    client = shared
    resp = await client.post(EMBEDDINGS, json=body, headers=CLIENT)
    await error_of(resp, 400, param, words)


# JSON's \ud800 escapes parse to lone surrogates, which have no UTF-8: written by hand,
# since json.dumps of such a str would escape them the same way.
SURROGATES = [
    pytest.param(
        b'{"input": "\\ud800"}',
        "input",
        "input[0] contains a lone surrogate ('\\ud800'",
        id="input-high",
    ),
    pytest.param(
        b'{"input": ["ok", "x\\udfff"]}',
        "input",
        "input[1] contains a lone surrogate",
        id="input-low",
    ),
    pytest.param(
        b'{"input": "a", "model": "m\\udc00"}',
        "model",
        "model contains a lone surrogate",
        id="model",
    ),
]


@shared_loop
@pytest.mark.parametrize(("body", "param", "words"), SURROGATES)
async def test_lone_surrogates_are_400_not_500(
    shared: TestClient, body: bytes, param: str, words: str
) -> None:
    client = shared
    resp = await client.post(
        EMBEDDINGS, data=body, headers={**CLIENT, "Content-Type": "application/json"}
    )
    error = await error_of(resp, 400, param, words, "not valid Unicode")
    assert error["code"] == "invalid_text"


async def test_a_surrogate_pair_is_one_valid_character(app_client: Any) -> None:
    client = await app_client()
    resp = await client.post(
        EMBEDDINGS,
        data=b'{"input": "\\ud83d\\ude00", "model": "m", "wait_seconds": 0}',
        headers={**CLIENT, "Content-Type": "application/json"},
    )
    assert resp.status == 202
    batch = await claim(client)
    assert batch["items"][0]["input"] == "\U0001f600"


@shared_loop
async def test_nul_message_says_how_to_fix_it(shared: TestClient) -> None:
    client = shared
    resp = await client.post(EMBEDDINGS, json={"input": "a\x00"}, headers=CLIENT)
    error = await error_of(resp, 400, "input", "cannot be stored", "remove it")
    assert error["code"] == "invalid_text"


ACCEPTED = [
    pytest.param({"dimensions": 8.0}, id="integral-float-dims"),
    pytest.param({"wait_seconds": 0.0}, id="integral-float-wait"),
    pytest.param(
        {"model": None, "encoding_format": None, "dimensions": None, "user": None},
        id="nulls-mean-defaults",
    ),
    pytest.param({"input": [[15339, 1917], [5686.0]]}, id="token-arrays"),
    pytest.param({"input": [100257]}, id="special-token"),
    pytest.param({"unknown_field": {"x": 1}}, id="unknown-fields-ignored"),
]


@shared_loop
@pytest.mark.parametrize("extra", ACCEPTED)
async def test_lenient_where_json_allows(shared: TestClient, extra: dict[str, Any]) -> None:
    client = shared
    body = {"input": "a", "model": "m", "wait_seconds": 0, **extra}
    resp = await client.post(EMBEDDINGS, json=body, headers=CLIENT)
    assert resp.status == 202, await resp.text()


# -- limits, each configurable -----------------------------------------------------------

LIMITS = [
    pytest.param(
        {"max_inputs": 3},
        {"input": ["a"] * 4},
        "4 items; at most 3",
        "too_many_inputs",
        id="max-inputs",
    ),
    pytest.param(
        {"max_inputs": 3},
        {"input": [1, 2, 3, 4]},
        "4 items; at most 3",
        "too_many_inputs",
        id="max-inputs-tokens",
    ),
    pytest.param(
        {"max_input_chars": 10},
        {"input": ["short", "x" * 11]},
        "input[1] has 11 characters; at most 10",
        "input_too_long",
        id="max-input-chars",
    ),
    pytest.param(
        {"max_total_chars": 15},
        {"input": ["x" * 8, "y" * 8]},
        "16 characters in all; at most 15",
        "request_too_long",
        id="max-total-chars",
    ),
]


@pytest.mark.parametrize(("limits", "body", "words", "code"), LIMITS)
async def test_limits(
    app_client: Any, limits: dict[str, int], body: dict[str, Any], words: str, code: str
) -> None:
    client = await app_client(**limits)
    error = await error_of(
        await client.post(EMBEDDINGS, json=body, headers=CLIENT), 400, "input", words
    )
    assert error["code"] == code


async def test_limits_are_inclusive(app_client: Any) -> None:
    client = await app_client(max_inputs=3, max_input_chars=10, max_total_chars=30)
    body = {"input": ["x" * 10] * 3, "model": "m", "wait_seconds": 0}
    assert (await client.post(EMBEDDINGS, json=body, headers=CLIENT)).status == 202


@shared_loop
async def test_the_default_input_limit_is_openais_2048(shared: TestClient) -> None:
    client = shared
    body = {"input": ["x"] * 2049}
    await error_of(
        await client.post(EMBEDDINGS, json=body, headers=CLIENT), 400, "input", "at most 2048"
    )


# -- backpressure ------------------------------------------------------------------------


async def test_a_full_queue_answers_429_with_retry_after(app_client: Any) -> None:
    # Deterministic without sleeping: submit() adds its inputs to the server's cached pending
    # count, so the cache (PENDING_CACHE_SECONDS) never hides this server's own submissions.
    client = await app_client(max_pending=5)
    first = {"input": ["a", "b", "c"], "model": "m", "wait_seconds": 0}
    assert (await client.post(EMBEDDINGS, json=first, headers=CLIENT)).status == 202
    second = {"input": ["d", "e", "f"], "model": "m", "wait_seconds": 0}
    resp = await client.post(EMBEDDINGS, json=second, headers=CLIENT)
    error = await error_of(resp, 429, None, "queue is full")
    assert error["code"] == "queue_full"
    assert int(resp.headers["Retry-After"]) > 0
    fits = {"input": ["d", "e"], "model": "m", "wait_seconds": 0}  # 3 + 2 = 5: at the bound
    assert (await client.post(EMBEDDINGS, json=fits, headers=CLIENT)).status == 202


async def test_requests_past_max_in_flight_answer_503_at_once(app_client: Any) -> None:
    # MAX_IN_FLIGHT bounds what waiting requests hold in memory: past it, a client request
    # is refused before its body is read, and the SDK retries after Retry-After.
    client = await app_client(max_in_flight=2)
    admission = client.server.app[ADMISSION]
    polled = {"input": "p", "model": "m", "wait_seconds": 0}
    task_id = (await (await client.post(EMBEDDINGS, json=polled, headers=CLIENT)).json())["id"]
    waiting = [
        asyncio.create_task(
            client.post(EMBEDDINGS, json={"input": t, "model": "m", "wait_seconds": 1},
                        headers=CLIENT)
        )
        for t in ("a", "b")
    ]  # fmt: skip

    async def both_held() -> bool:
        return admission.held == 2

    await wait_until(both_held)
    resp = await client.post(EMBEDDINGS, json={"input": "c", "model": "m"}, headers=CLIENT)
    error = await error_of(resp, 503, None, "MAX_IN_FLIGHT", "retry")
    assert error["code"] == "server_busy"
    assert int(resp.headers["Retry-After"]) > 0
    for path in (f"/tasks/{task_id}", f"/tasks/{task_id}/result"):
        assert (await client.get(path, headers=CLIENT)).status == 503
    scraped = (await (await client.get("/metrics")).text()).splitlines()
    assert {"embedq_requests_in_flight 2.0", "embedq_requests_in_flight_max 2.0"} <= set(scraped)
    assert (await claim(client))["items"]  # workers are never refused: they drain the queue
    assert [(await r).status for r in waiting] == [202, 202]  # their wait ran out
    assert admission.held == 0
    resp = await client.post(EMBEDDINGS, json={"input": "c", "model": "m", "wait_seconds": 0},
                             headers=CLIENT)  # fmt: skip
    assert resp.status == 202


def test_max_in_flight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="MAX_IN_FLIGHT"):
        make_settings(max_in_flight=0)


async def test_a_request_larger_than_the_whole_queue_is_400_not_429(app_client: Any) -> None:
    # A 429 would be retried by SDKs, but this request can never fit.
    client = await app_client(max_pending=5)
    body = {"input": ["x"] * 6, "model": "m", "wait_seconds": 0}
    resp = await client.post(EMBEDDINGS, json=body, headers=CLIENT)
    error = await error_of(resp, 400, "input", "at most 5 pending inputs", "split the request")
    assert error["code"] == "too_many_inputs"


async def test_the_queue_accepts_again_once_workers_drain_it(
    app_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Workers drain the queue through the database; with no cache the next request sees it.
    monkeypatch.setattr(queue_module, "PENDING_CACHE_SECONDS", 0.0)
    client = await app_client(max_pending=2)
    body = {"input": ["a", "b"], "model": "m", "wait_seconds": 0}
    assert (await client.post(EMBEDDINGS, json=body, headers=CLIENT)).status == 202
    more = {"input": ["c"], "model": "m", "wait_seconds": 0}
    assert (await client.post(EMBEDDINGS, json=more, headers=CLIENT)).status == 429
    batch = await claim(client)
    assert len(batch["items"]) == 2  # claimed: no longer pending
    assert (await client.post(EMBEDDINGS, json=more, headers=CLIENT)).status == 202


# -- methods and routes ------------------------------------------------------------------

ROUTES = [
    pytest.param("GET", EMBEDDINGS, 405, "POST", id="get-on-post-route"),
    pytest.param("PUT", EMBEDDINGS, 405, "POST", id="put-on-post-route"),
    pytest.param("POST", "/v1/models", 405, "GET", id="post-on-get-route"),
    pytest.param("DELETE", f"/tasks/{uuid.uuid4()}", 405, "GET", id="delete-task"),
    pytest.param("GET", "/worker/claim", 405, "POST", id="get-on-worker-route"),
    pytest.param("GET", "/v1/embedding", 404, None, id="unknown-route"),
    pytest.param("POST", "/v1/chat/completions", 404, None, id="unsupported-openai-route"),
    pytest.param("GET", "/", 404, None, id="root"),
]


@shared_loop
@pytest.mark.parametrize(("method", "path", "status", "allow"), ROUTES)
async def test_wrong_methods_and_unknown_routes(
    shared: TestClient, method: str, path: str, status: int, allow: str | None
) -> None:
    client = shared
    resp = await client.request(method, path, headers=CLIENT)
    if status == 405:
        error = await error_of(resp, 405, None, f"{method} is not allowed on {path}")
        assert allow is not None and allow in resp.headers["Allow"]
    else:
        error = await error_of(resp, 404, None, f"no route {method} {path}")
    assert error["code"] is None


# -- GET /tasks/{id} ---------------------------------------------------------------------

TASK_QUERIES = [
    pytest.param("wait_seconds=-1", "wait_seconds", id="wait-negative"),
    pytest.param("wait_seconds=1.5", "wait_seconds", id="wait-fraction"),
    pytest.param("wait_seconds=31", "wait_seconds", id="wait-too-long"),
    pytest.param("wait_seconds=%C2%B2", "wait_seconds", id="wait-superscript-two"),
    pytest.param("wait_seconds=%D9%A3", "wait_seconds", id="wait-arabic-digit"),
    pytest.param("wait_seconds=" + "9" * 5000, "wait_seconds", id="wait-5000-digits"),
    pytest.param("wait_seconds=", "wait_seconds", id="wait-empty"),
    pytest.param("encoding_format=xml", "encoding_format", id="format-unknown"),
    pytest.param("wait=5", "wait", id="unknown-parameter-typo"),
    pytest.param("wait_seconds=1&format=base64", "format", id="unknown-parameter-second"),
]


@shared_loop
@pytest.mark.parametrize("suffix", ["", "/result"])
@pytest.mark.parametrize(("query", "param"), TASK_QUERIES)
async def test_task_queries(shared: TestClient, suffix: str, query: str, param: str) -> None:
    client = shared
    resp = await client.post(EMBEDDINGS, json={"input": "a", "wait_seconds": 0}, headers=CLIENT)
    task_id = (await resp.json())["id"]
    resp = await client.get(f"/tasks/{task_id}{suffix}?{query}", headers=CLIENT)
    await error_of(resp, 400, param, param)


@shared_loop
@pytest.mark.parametrize("task_id", ["nope", "1", "%00", "x" * 500, str(uuid.uuid4())])
async def test_unknown_task_ids_are_404(shared: TestClient, task_id: str) -> None:
    client = shared
    resp = await client.get(f"/tasks/{task_id}", headers=CLIENT)
    error = await error_of(resp, 404, "task_id", "no task")
    assert error["code"] == "task_not_found"
    assert len(error["message"]) < 200


# -- the worker endpoints ----------------------------------------------------------------

LEASE = "6f1c1a55-8a3c-4f7e-9d55-2d0a8f9e1b77"  # well formed, never issued
CLAIM = {"worker": "w1", "models": ["m"]}
WORKER_BODIES = [
    # who is calling
    pytest.param("claim", {"models": ["m"]}, "worker", "worker is required", id="worker-missing"),
    pytest.param(
        "claim",
        {**CLAIM, "worker": 5},
        "worker",
        "must be a string, not a number",
        id="worker-number",
    ),
    pytest.param(
        "claim", {**CLAIM, "worker": " "}, "worker", "must name the worker", id="worker-blank"
    ),
    pytest.param("claim", {**CLAIM, "worker": "w\u0000"}, "worker", "NUL", id="worker-nul"),
    pytest.param(
        "claim", {**CLAIM, "models": "m"}, "models", "must be an array", id="models-string"
    ),
    pytest.param(
        "claim", {**CLAIM, "models": [5]}, "models", "non-empty strings", id="models-numbers"
    ),
    pytest.param(
        "claim", {**CLAIM, "models": [""]}, "models", "non-empty strings", id="models-empty-name"
    ),
    pytest.param(
        "claim", {**CLAIM, "models": []}, "models", "at least one model", id="models-none"
    ),
    pytest.param("claim", {**CLAIM, "models": ["m\u0000"]}, "models", "NUL", id="models-nul"),
    pytest.param(
        "claim", {**CLAIM, "version": 5}, "version", "string or null", id="version-number"
    ),
    pytest.param("claim", {**CLAIM, "host": ["h"]}, "host", "string or null", id="host-array"),
    # claim
    pytest.param(
        "claim", {**CLAIM, "max_items": 0}, "max_items", "at least 1", id="max-items-zero"
    ),
    pytest.param(
        "claim", {**CLAIM, "max_items": "5"}, "max_items", "an integer", id="max-items-string"
    ),
    pytest.param(
        "claim", {**CLAIM, "max_items": True}, "max_items", "an integer", id="max-items-bool"
    ),
    pytest.param(
        "claim", {**CLAIM, "max_items": 2.5}, "max_items", "an integer", id="max-items-fraction"
    ),
    pytest.param(
        "claim", {**CLAIM, "wait_seconds": -1}, "wait_seconds", "at least 0", id="wait-negative"
    ),
    pytest.param(
        "claim", {**CLAIM, "wait_seconds": "1"}, "wait_seconds", "a number", id="wait-string"
    ),
    # heartbeat
    pytest.param(
        "heartbeat", {"worker": "w1"}, "lease", "lease is required", id="hb-lease-missing"
    ),
    pytest.param(
        "heartbeat",
        {"worker": "w1", "lease": "nope"},
        "lease",
        "not a lease",
        id="hb-lease-malformed",
    ),
    pytest.param(
        "heartbeat", {"worker": "w1", "lease": 5}, "lease", "must be a string", id="hb-lease-number"
    ),
    pytest.param(
        "heartbeat",
        {"worker": "w1", "lease": None},
        "lease",
        "must be a string",
        id="hb-lease-null",
    ),
    # complete
    pytest.param(
        "complete",
        {"worker": "w1", "lease": "x"},
        "lease",
        "not a lease",
        id="complete-lease-malformed",
    ),
    pytest.param(
        "complete",
        {"worker": "w1", "lease": LEASE, "results": "x"},
        "results",
        "must be an array",
        id="results-string",
    ),
    pytest.param(
        "complete",
        {"worker": "w1", "lease": LEASE, "results": [5]},
        "results",
        "must be an object",
        id="results-number",
    ),
    pytest.param(
        "complete",
        {"worker": "w1", "lease": LEASE, "results": [{"id": "1", "embedding": "AAAAAA=="}]},
        "results",
        "item id",
        id="result-id-string",
    ),
    pytest.param(
        "complete",
        {"worker": "w1", "lease": LEASE, "results": [{"id": 0, "embedding": "AAAAAA=="}]},
        "results",
        "item id",
        id="result-id-zero",
    ),
    pytest.param(
        "complete",
        {"worker": "w1", "lease": LEASE, "results": [{"id": 2**63, "embedding": "AAAAAA=="}]},
        "results",
        "item id",
        id="result-id-past-bigint",
    ),
    pytest.param(
        "complete",
        {"worker": "w1", "lease": LEASE, "results": [{"id": True, "embedding": "AAAAAA=="}]},
        "results",
        "item id",
        id="result-id-bool",
    ),
    pytest.param(
        "complete",
        {"worker": "w1", "lease": LEASE, "results": [{"id": 1}]},
        "results",
        "embedding (base64)",
        id="result-no-embedding",
    ),
    pytest.param(
        "complete",
        {"worker": "w1", "lease": LEASE, "results": [{"id": 1, "embedding": "!!!!"}]},
        "results",
        "not base64",
        id="result-not-base64",
    ),
    pytest.param(
        "complete",
        {"worker": "w1", "lease": LEASE, "results": [{"id": 1, "embedding": "AAA="}]},
        "results",
        "not float32 bytes",
        id="result-odd-bytes",
    ),
    pytest.param(
        "complete",
        {"worker": "w1", "lease": LEASE, "results": [{"id": 1, "embedding": ""}]},
        "results",
        "not float32 bytes",
        id="result-empty-vector",
    ),
    pytest.param(
        "complete",
        {
            "worker": "w1",
            "lease": LEASE,
            "results": [{"id": 1, "embedding": "AAAAAA==", "tokens": -1}],
        },
        "results",
        "out of range",
        id="result-tokens-negative",
    ),
    pytest.param(
        "complete",
        {
            "worker": "w1",
            "lease": LEASE,
            "results": [{"id": 1, "embedding": "AAAAAA==", "tokens": 2**31}],
        },
        "results",
        "out of range",
        id="result-tokens-past-int4",
    ),
    pytest.param(
        "complete",
        {
            "worker": "w1",
            "lease": LEASE,
            "results": [{"id": 1, "embedding": "AAAAAA==", "tokens": "3"}],
        },
        "results",
        "tokens must be an integer",
        id="result-tokens-string",
    ),
    pytest.param(
        "complete",
        {"worker": "w1", "lease": LEASE, "failures": [{}]},
        "failures",
        "item id",
        id="failure-no-id",
    ),
    pytest.param(
        "complete",
        {"worker": "w1", "lease": LEASE, "failures": [{"id": 1, "retry": "yes"}]},
        "failures",
        "retry must be a boolean",
        id="failure-retry-string",
    ),
    pytest.param(
        "complete",
        {"worker": "w1", "lease": LEASE, "model_revision": 5},
        "model_revision",
        "string or null",
        id="revision-number",
    ),
    # release
    pytest.param(
        "release", {"worker": "w1", "lease": LEASE}, "ids", "ids is required", id="release-no-ids"
    ),
    pytest.param(
        "release",
        {"worker": "w1", "lease": LEASE, "ids": [True]},
        "ids",
        "item ids",
        id="release-bool-ids",
    ),
    pytest.param(
        "release",
        {"worker": "w1", "lease": LEASE, "ids": ["1"]},
        "ids",
        "item ids",
        id="release-string-ids",
    ),
    pytest.param(
        "release",
        {"worker": "w1", "lease": LEASE, "ids": [2**63]},
        "ids",
        "item ids",
        id="release-past-bigint",
    ),
    pytest.param(
        "release", {"worker": "w1", "ids": [1]}, "lease", "lease is required", id="release-no-lease"
    ),
]


@shared_loop
@pytest.mark.parametrize(("verb", "body", "param", "words"), WORKER_BODIES)
async def test_worker_bodies(
    shared: TestClient, verb: str, body: dict[str, Any], param: str, words: str
) -> None:
    client = shared
    resp = await client.post(f"/worker/{verb}", json=body, headers=WORKER)
    await error_of(resp, 400, param, words)


@shared_loop
@pytest.mark.parametrize("verb", ["claim", "heartbeat", "complete", "release"])
@pytest.mark.parametrize(
    "raw",
    [b"[]", b"nope", b'{"worker": "w1", "wait_seconds": NaN, "models": ["m"]}', b"\xff"],
    ids=["array", "not-json", "nan", "not-utf8"],
)
async def test_worker_unreadable_bodies(shared: TestClient, verb: str, raw: bytes) -> None:
    client = shared
    resp = await client.post(
        f"/worker/{verb}", data=raw, headers={**WORKER, "Content-Type": "application/json"}
    )
    await error_of(resp, 400, None)


async def test_unknown_leases_answer_409_lease_lost(app_client: Any) -> None:
    client = await app_client()
    resp = await client.post(
        "/worker/heartbeat", json={"worker": "w1", "lease": LEASE}, headers=WORKER
    )
    error = await error_of(resp, 409, None, "lease lost")
    assert error["code"] == "lease_lost"
    resp = await client.post(
        "/worker/complete",
        json={
            "worker": "w1",
            "lease": LEASE,
            "results": [{"id": 1, "embedding": vec(1.0)}],
            "failures": [{"id": 2, "code": ["not", "a", "code"]}],
        },
        headers=WORKER,
    )
    error = await error_of(resp, 409, "lease", "lease lost")
    body = await resp.json()
    assert body["refused"] == [1, 2] and body["completed"] == [] and body["failed"] == []
    resp = await client.post(
        "/worker/release", json={"worker": "w1", "lease": LEASE, "ids": [1]}, headers=WORKER
    )
    assert resp.status == 200 and (await resp.json())["released"] == []


async def test_a_workers_unstorable_error_text_is_kept_readable(app_client: Any) -> None:
    # A backend's message may hold anything; losing the batch over it would be worse.
    client = await app_client()
    resp = await client.post(
        EMBEDDINGS, json={"input": "a", "model": "m", "wait_seconds": 0}, headers=CLIENT
    )
    task_id = (await resp.json())["id"]
    batch = await claim(client)
    raw = json.dumps(
        {
            "worker": "w1",
            "lease": batch["lease"],
            "model_revision": "rev\u0000",
            "failures": [
                {
                    "id": batch["items"][0]["id"],
                    "error": "bad\u0000thing \ud800",
                    "code": "input_rejected",
                }
            ],
        },
        ensure_ascii=True,
    )
    resp = await client.post(
        "/worker/complete", data=raw, headers={**WORKER, "Content-Type": "application/json"}
    )
    assert resp.status == 200, await resp.text()
    task = await (await client.get(f"/tasks/{task_id}", headers=CLIENT)).json()
    assert task["status"] == "failed"
    assert "bad\ufffdthing ?" in task["error"]["message"]
    result = await client.get(f"/tasks/{task_id}/result", headers=CLIENT)
    await error_of(result, 400, "input", "bad\ufffdthing")


async def test_integral_floats_count_as_integers_for_workers(app_client: Any) -> None:
    client = await app_client()
    await client.post(
        EMBEDDINGS, json={"input": "a", "model": "m", "wait_seconds": 0}, headers=CLIENT
    )
    resp = await client.post("/worker/claim", json={**CLAIM, "max_items": 5.0}, headers=WORKER)
    batch = await resp.json()
    item = batch["items"][0]["id"]
    resp = await client.post(
        "/worker/complete",
        json={
            "worker": "w1",
            "lease": batch["lease"],
            "results": [{"id": float(item), "embedding": vec(1.0), "tokens": 1.0}],
        },
        headers=WORKER,
    )
    assert resp.status == 200 and (await resp.json())["completed"] == [item]


async def test_concurrent_garbage_leaves_the_server_serving(app_client: Any) -> None:
    """A burst of every bad body at once: all 4xx, then a good request still works."""
    client: TestClient = await app_client()
    bodies = [p.values[0] for p in FIELDS]
    answers = await asyncio.gather(
        *(client.post(EMBEDDINGS, json=b, headers=CLIENT) for b in bodies)
    )
    assert all(400 <= a.status < 500 for a in answers), [a.status for a in answers]
    good = await client.post(EMBEDDINGS, json={"input": "a", "wait_seconds": 0}, headers=CLIENT)
    assert good.status == 202
