"""GET /status: the token gate, escaping, and the page as headless Chromium renders it from a
real listening server with a real queue behind it.

Chromium is required (Debian: `apt-get install -y chromium`); without it the browser test
fails and says so, it is never skipped.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile

import pytest
from aiohttp.test_utils import TestClient

from tests.helpers import CLIENT, CLIENT_TOKEN, WORKER
from tests.integration.test_ops_views import post_results, seed_queue, submit

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_TIMEOUT = 60.0  # seconds


def chromium() -> str:
    path = os.environ.get("CHROMIUM") or next(
        (found for name in CHROMIUM_CANDIDATES if (found := shutil.which(name))), None
    )
    if not path:
        pytest.fail(
            "headless Chromium is needed to test /status but none was found on PATH "
            f"(looked for {', '.join(CHROMIUM_CANDIDATES)}; or set CHROMIUM=/path). "
            "On Debian/Ubuntu: apt-get update && apt-get install -y chromium"
        )
    return path


async def render(url: str) -> str:
    """The DOM of `url` after Chromium loaded it."""
    with tempfile.TemporaryDirectory(prefix="embedq-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--dump-dom",
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), CHROMIUM_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


def cell(dom: str, model: str, state: str) -> str:
    found = re.search(rf'data-model="{re.escape(model)}" data-state="{state}">(\d+)<', dom)
    assert found, f"no {model}/{state} cell in the page"
    return found.group(1)


async def test_chromium_renders_the_live_numbers(app_client):
    client: TestClient = await app_client()
    await seed_queue(client)
    await submit(client, "m-a", ["x", "y"])  # pending m-a: 3 + 2
    url = client.make_url(f"/status?token={CLIENT_TOKEN}")
    dom = await render(str(url))
    assert "<h1>embedq status</h1>" in dom
    assert cell(dom, "m-a", "pending") == "5"
    assert cell(dom, "m-a", "processing") == "1"
    assert cell(dom, "m-b", "completed") == "1"
    assert cell(dom, "m-b", "failed") == "3"
    assert '<span id="total-pending">5</span>' in dom
    assert '<span id="live-workers">2</span>' in dom
    assert 'data-worker="w1"' in dom and 'data-worker="w2"' in dom
    assert "boom-c0" in dom and "boom-b" in dom
    assert re.search(r'<polyline data-model="m-b" data-total="1"', dom)
    assert "<svg" in dom and "<script" not in dom


async def test_chromium_without_a_token_gets_the_login_form(app_client):
    client: TestClient = await app_client()
    dom = await render(str(client.make_url("/status")))
    assert 'name="token"' in dom and 'action="/status"' in dom
    assert "Enter a client token." in dom
    assert "data-state" not in dom


async def test_token_gate(app_client):
    client = await app_client()
    resp = await client.get("/status")
    assert resp.status == 401 and resp.headers["Content-Type"].startswith("text/html")
    assert "Enter a client token." in await resp.text()
    resp = await client.get("/status?token=wrong")
    assert resp.status == 401 and "not valid" in await resp.text()
    assert (await client.get("/status", headers=WORKER)).status == 401  # client scope only
    assert (await client.get("/status", headers=CLIENT)).status == 200
    resp = await client.get(f"/status?token={CLIENT_TOKEN}")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]


async def test_open_access_on_loopback_without_tokens(app_client):
    client = await app_client(auth_tokens=())
    resp = await client.get("/status")
    assert resp.status == 200 and "The queue is empty." in await resp.text()


async def test_everything_from_the_database_is_escaped(app_client):
    client = await app_client()
    evil = "<script>alert(1)</script>"
    await submit(client, evil, ["a"])
    resp = await client.post(
        "/worker/claim",
        json={"worker": "<b>w</b>", "models": [evil], "wait_seconds": 0, "host": '"><img>'},
        headers=WORKER,
    )
    batch = await resp.json()
    await post_results(client, "<b>w</b>", batch["lease"], [], [(batch["items"][0]["id"], evil)])
    page = await (await client.get("/status", headers=CLIENT)).text()
    assert "<script" not in page and "<b>w</b>" not in page and "<img>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;w&lt;/b&gt;" in page


async def test_a_model_without_a_live_worker_is_flagged(app_client):
    client = await app_client()
    await submit(client, "nobody-serves-this", ["a"])
    page = await (await client.get("/status", headers=CLIENT)).text()
    assert "no live worker serves this model" in page
    assert "Nothing completed in the last hour." in page


async def test_a_token_that_is_not_utf8_gets_the_login_form(app_client):
    client = await app_client()
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"GET /status HTTP/1.1\r\nAuthorization: Bearer \xff\xfe\r\n"
        b"Host: test\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401 ") and b'name="token"' in answer
