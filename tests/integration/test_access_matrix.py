"""Who may call what. Every endpoint is called with no token, a wrong one, a client's, a
worker's and another client's: client endpoints refuse worker tokens and worker endpoints
refuse client tokens (401), another client's task answers 404 as if it did not exist, and
a refused call changes nothing. Then the rules that keep a server from listening unsafely,
and the token comparison itself.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from embedq_server import auth
from embedq_server.app import create_app
from embedq_server.auth import TokenSet, presented_token
from embedq_server.keys import POOL
from embedq_server.settings import SAMPLE_TOKENS, Settings
from tests.conftest import TEMPLATE, with_database
from tests.helpers import (
    CLIENT,
    CLIENT_TOKEN,
    OTHER_CLIENT,
    OTHER_CLIENT_TOKEN,
    WORKER,
    claim,
    make_settings,
)

NONE: dict[str, str] = {}
WRONG = {"Authorization": "Bearer not-a-token-of-this-server"}
CALLERS = {"none": NONE, "wrong": WRONG, "client": CLIENT, "worker": WORKER, "other": OTHER_CLIENT}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(pg_url: str, template_url: str) -> AsyncIterator[TestClient]:
    """One server for the matrix: each case makes its own task under its own model name,
    so the cases cannot see each other's work."""
    name = "embedq_t_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    finally:
        await admin.close()
    with pytest.MonkeyPatch.context() as env:
        env.delenv("METRICS_TOKEN", raising=False)  # /metrics is token-free without it
        app = create_app(make_settings(), with_database(pg_url, name))
    client = TestClient(TestServer(app))
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


@dataclass
class World:
    """One client's task, with its only input claimed by a worker."""

    client: TestClient
    model: str
    task_id: str
    lease: str
    item_id: int


async def make_world(client: TestClient) -> World:
    model = "m-" + uuid.uuid4().hex[:8]
    resp = await client.post(
        "/v1/embeddings", json={"input": "mine", "model": model, "wait_seconds": 0}, headers=CLIENT
    )
    assert resp.status == 202
    task_id = (await resp.json())["id"]
    batch = await claim(client, models=[model])
    return World(client, model, task_id, batch["lease"], batch["items"][0]["id"])


def _vector() -> str:
    return base64.b64encode(struct.pack("<2f", 1.0, 2.0)).decode()


def request_for(endpoint: str, w: World) -> tuple[str, str, dict[str, Any] | None]:
    """The method, path and body of a well-formed call to each endpoint."""
    identity = {"worker": "w1", "models": [w.model]}
    new = {"input": "new", "model": w.model, "wait_seconds": 0}
    return {
        "POST /v1/embeddings": ("POST", "/v1/embeddings", new),
        "GET /v1/models": ("GET", "/v1/models", None),
        "GET /tasks/{id}": ("GET", f"/tasks/{w.task_id}", None),
        "GET /tasks/{id}/result": ("GET", f"/tasks/{w.task_id}/result", None),
        "POST /worker/claim": ("POST", "/worker/claim", identity),
        "POST /worker/heartbeat": ("POST", "/worker/heartbeat", {**identity, "lease": w.lease}),
        "POST /worker/complete": (
            "POST",
            "/worker/complete",
            {
                **identity,
                "lease": w.lease,
                "results": [{"id": w.item_id, "embedding": _vector(), "tokens": 1}],
            },
        ),
        "POST /worker/release": (
            "POST",
            "/worker/release",
            {**identity, "lease": w.lease, "ids": [w.item_id]},
        ),
        "GET /health": ("GET", "/health", None),
        "GET /ready": ("GET", "/ready", None),
        "GET /openapi.json": ("GET", "/openapi.json", None),
        "GET /metrics": ("GET", "/metrics", None),
        "GET /status": ("GET", "/status", None),
    }[endpoint]


# fmt: off
MATRIX = [
    # endpoint                  none  wrong  client worker other client
    ("POST /v1/embeddings",     401,  401,   202,   401,   202),
    ("GET /v1/models",          401,  401,   200,   401,   200),
    ("GET /tasks/{id}",         401,  401,   200,   401,   404),
    ("GET /tasks/{id}/result",  401,  401,   202,   401,   404),
    ("POST /worker/claim",      401,  401,   401,   200,   401),
    ("POST /worker/heartbeat",  401,  401,   401,   200,   401),
    ("POST /worker/complete",   401,  401,   401,   200,   401),
    ("POST /worker/release",    401,  401,   401,   200,   401),
    ("GET /status",             401,  401,   200,   401,   200),
    ("GET /health",             200,  200,   200,   200,   200),
    ("GET /ready",              200,  200,   200,   200,   200),
    ("GET /openapi.json",       200,  200,   200,   200,   200),
    ("GET /metrics",            200,  200,   200,   200,   200),
]
# fmt: on
CASES = [
    pytest.param(endpoint, caller, status, id=f"{endpoint} as {caller}")
    for endpoint, *statuses in MATRIX
    for caller, status in zip(CALLERS, statuses, strict=True)
]


async def snapshot(client: TestClient) -> list[Any]:
    pool = client.app[POOL]
    tasks = await pool.fetch("SELECT id, remaining, failed FROM embedq_task ORDER BY id")
    items = await pool.fetch(
        "SELECT id, state, lease_token, lease_expires, vector FROM embedq_item ORDER BY id"
    )
    return [tuple(r) for r in tasks] + [tuple(r) for r in items]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(("endpoint", "caller", "status"), CASES)
async def test_access_matrix(shared: TestClient, endpoint: str, caller: str, status: int) -> None:
    w = await make_world(shared)
    method, path, body = request_for(endpoint, w)
    before = await snapshot(w.client)
    resp = await w.client.request(method, path, json=body, headers=CALLERS[caller])
    text = await resp.text()
    assert resp.status == status, text
    if status == 401:
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert await snapshot(w.client) == before, "a refused call changed the queue"
        if endpoint != "GET /status":  # a page for people: it answers with a sign-in form
            error = (await resp.json())["error"]
            assert error["type"] == "authentication_error"
            assert set(error) == {"message", "type", "param", "code"}
            assert error["code"] == ("missing_token" if caller == "none" else "invalid_token")
    if status == 404:
        assert await snapshot(w.client) == before


@pytest.mark.parametrize("suffix", ["", "/result"])
async def test_another_clients_task_is_indistinguishable_from_none(
    app_client: Any, suffix: str
) -> None:
    w = await make_world(await app_client())
    theirs = await w.client.get(f"/tasks/{w.task_id}{suffix}", headers=OTHER_CLIENT)
    missing_id = str(uuid.uuid4())
    missing = await w.client.get(f"/tasks/{missing_id}{suffix}", headers=OTHER_CLIENT)
    assert theirs.status == missing.status == 404
    their_body = (await theirs.text()).replace(w.task_id, "<id>")
    missing_body = (await missing.text()).replace(missing_id, "<id>")
    assert their_body == missing_body
    assert set(theirs.headers) - {"Date"} == set(missing.headers) - {"Date"}


async def test_each_client_sees_its_own_copy_of_an_identical_request(app_client: Any) -> None:
    # Identical requests by the same client share a task; by another client they never do,
    # or one could learn what the other embeds.
    client = await app_client()
    body = {"input": "same text", "model": "m", "wait_seconds": 0}
    mine = await (await client.post("/v1/embeddings", json=body, headers=CLIENT)).json()
    again = await (await client.post("/v1/embeddings", json=body, headers=CLIENT)).json()
    theirs = await (await client.post("/v1/embeddings", json=body, headers=OTHER_CLIENT)).json()
    assert mine["id"] == again["id"] != theirs["id"]


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Basic Y2xpZW50LXRva2VuLWE6",
        f"Token {CLIENT_TOKEN}",
        f"Bearer {CLIENT_TOKEN[:-1]}",
        f"Bearer {CLIENT_TOKEN}x",
        f"Bearer {CLIENT_TOKEN.upper()}",
        f"Bearer {CLIENT_TOKEN},{OTHER_CLIENT_TOKEN}",
        f"Bearer  {CLIENT_TOKEN} x",
        "Bearer caf\u00e9",
    ],
)
async def test_malformed_authorization_headers_are_401(app_client: Any, header: str) -> None:
    client = await app_client()
    resp = await client.get("/v1/models", headers={"Authorization": header})
    assert resp.status == 401, await resp.text()
    assert (await resp.json())["error"]["type"] == "authentication_error"


async def test_a_token_in_the_query_string_is_not_a_bearer_token(app_client: Any) -> None:
    client = await app_client()
    resp = await client.get(f"/v1/models?token={CLIENT_TOKEN}")
    assert resp.status == 401


async def raw_status(client: TestClient, head: bytes, body: bytes = b"") -> bytes:
    """Send bytes aiohttp's client would refuse to; return the status line."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    length = b"Content-Length: %d\r\n" % len(body) if body else b""
    writer.write(head + length + b"Host: test\r\nConnection: close\r\n\r\n" + body)
    await writer.drain()
    status = (await reader.read(200)).split(b"\r\n", 1)[0]
    writer.close()
    return status


NOT_UTF8 = b"Authorization: Bearer \xff\xfe\r\n"


async def test_an_authorization_header_that_is_not_utf8_is_401(app_client: Any) -> None:
    client = await app_client()
    status = await raw_status(client, b"GET /v1/models HTTP/1.1\r\n" + NOT_UTF8)
    assert status == b"HTTP/1.1 401 Unauthorized"


async def test_open_access_takes_a_token_that_is_not_utf8(app_client: Any) -> None:
    client = await app_client(auth_tokens=(), worker_tokens=(), host="127.0.0.1")
    head = b"POST /v1/embeddings HTTP/1.1\r\nContent-Type: application/json\r\n" + NOT_UTF8
    status = await raw_status(client, head, b'{"input": "a", "wait_seconds": 0}')
    assert status == b"HTTP/1.1 202 Accepted"


async def test_a_metrics_token_that_is_not_utf8_is_401(
    app_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRICS_TOKEN", "metrics-secret-1")
    client = await app_client()
    assert (await client.get("/metrics")).status == 401
    status = await raw_status(client, b"GET /metrics HTTP/1.1\r\n" + NOT_UTF8)
    assert status == b"HTTP/1.1 401 Unauthorized"


# -- open access: loopback without tokens, for a local trial -----------------------------


async def test_loopback_without_tokens_lets_anyone_in(app_client: Any) -> None:
    client = await app_client(auth_tokens=(), worker_tokens=(), host="127.0.0.1")
    resp = await client.post("/v1/embeddings", json={"input": "a", "wait_seconds": 0})
    assert resp.status == 202
    task_id = (await resp.json())["id"]
    assert (await client.get(f"/tasks/{task_id}")).status == 200
    resp = await client.post("/worker/claim", json={"worker": "w", "models": ["nomic-embed-text"]})
    assert resp.status == 200 and len((await resp.json())["items"]) == 1


async def test_tokens_on_loopback_are_still_required(app_client: Any) -> None:
    client = await app_client(host="127.0.0.1")  # tokens configured: no open access
    assert (await client.get("/v1/models")).status == 401
    assert (await client.post("/worker/claim", json={"worker": "w", "models": ["m"]})).status == 401


# -- Settings.check_safe_to_listen -------------------------------------------------------

GOOD: dict[str, Any] = {"auth_tokens": ("client-secret-1",), "worker_tokens": ("worker-secret-1",)}


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_may_listen_without_tokens(host: str) -> None:
    Settings(host=host).check_safe_to_listen()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com", "[::]"])
@pytest.mark.parametrize(
    "tokens",
    [
        pytest.param({}, id="no-tokens"),
        pytest.param({"auth_tokens": ("client-secret-1",)}, id="no-worker-token"),
        pytest.param({"worker_tokens": ("worker-secret-1",)}, id="no-client-token"),
    ],
)
def test_elsewhere_needs_both_kinds_of_token(host: str, tokens: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="without AUTH_TOKEN and WORKER_TOKEN"):
        Settings(host=host, **tokens).check_safe_to_listen()


@pytest.mark.parametrize("sample", sorted(SAMPLE_TOKENS))
@pytest.mark.parametrize("scope", ["auth_tokens", "worker_tokens"])
def test_the_readmes_sample_tokens_are_refused(sample: str, scope: str) -> None:
    tokens = {**GOOD, scope: (*GOOD[scope], sample)}
    with pytest.raises(ValueError, match="sample token"):
        Settings(host="0.0.0.0", **tokens).check_safe_to_listen()


def test_a_token_in_both_scopes_is_refused() -> None:
    shared = "shared-secret-1"
    with pytest.raises(ValueError, match="both a client token and a worker token"):
        Settings(
            host="0.0.0.0",
            auth_tokens=("client-secret-1", shared),
            worker_tokens=(shared,),
        ).check_safe_to_listen()


def test_distinct_own_tokens_may_listen_anywhere() -> None:
    Settings(host="0.0.0.0", **GOOD).check_safe_to_listen()


# -- TokenSet ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("presented", "ok"),
    [
        ("client-token-a", True),
        ("client-token-b", True),
        ("client-token-", False),  # a prefix
        ("client-token-aa", False),  # an extension
        ("client", False),
        ("", False),
        ("CLIENT-TOKEN-A", False),
        (" client-token-a", False),
        ("client-token-a\n", False),
        ("client-token-a,client-token-b", False),
        ("caf\u00e9", False),
    ],
)
def test_token_set_matches_whole_tokens_only(presented: str, ok: bool) -> None:
    assert TokenSet(["client-token-a", "client-token-b"]).matches(presented) is ok


def test_token_set_compares_in_constant_time_against_every_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    tokens = TokenSet(["one-token", "two-token", "three-token"])
    assert tokens.matches("one-token")
    # No early exit on a match: the time taken does not say which token matched.
    assert [b for _a, b in calls] == [b"one-token", b"two-token", b"three-token"]


def test_token_set_ignores_empty_tokens_and_is_open_only_without_any() -> None:
    assert not TokenSet(["", ""]).matches("")
    assert TokenSet([], open_access=True).open_access
    assert not TokenSet(["t"], open_access=True).open_access
    assert not TokenSet([]).open_access


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER  abc ", "abc"),
        ("Bearer", None),
        ("Bearer   ", None),
        ("Basic abc", None),
        ("Bearerabc", None),
        ("", None),
    ],
)
def test_presented_token(header: str, token: str | None) -> None:
    class Request:
        headers = {"Authorization": header}

    assert presented_token(Request()) == token  # type: ignore[arg-type]
