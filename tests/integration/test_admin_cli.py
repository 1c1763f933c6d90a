"""embedq-server status|requeue|purge|tokens against a real database, checked by their output,
exit codes, and what the API says afterwards (a requeued task really completes)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import asyncpg
import pytest

from embedq_server.cli import main
from tests.helpers import CLIENT, claim
from tests.integration.test_ops_views import post_results, seed_queue, submit


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in a thread (it runs its own event loop) and capture what it printed.
    main() points the root logger at this test's captured stderr: put it back after, or
    later tests log into a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    capsys.readouterr()
    try:
        code = await asyncio.to_thread(main, list(argv))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    out, err = capsys.readouterr()
    return code, out, err


async def task_row(db_url: str, task_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow("SELECT * FROM embedq_task WHERE id = $1", uuid.UUID(task_id))
        assert row is not None
        return row
    finally:
        await conn.close()


async def execute(db_url: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def test_status_shows_queue_and_workers(app_client, db_url, capsys):
    await seed_queue(await app_client())
    code, out, _ = await cli(capsys, "status", "--database-url", db_url)
    assert code == 0
    lines = out.splitlines()
    assert any(line.split()[:3] == ["m-a", "pending", "3"] for line in lines), out
    assert any(line.split()[:3] == ["m-b", "failed", "3"] for line in lines), out
    assert "workers (2 alive of 2 registered)" in out
    w1 = next(line for line in lines if line.split()[:1] == ["w1"])
    assert w1.split()[1:3] == ["yes", "m-a"] and "ago" in w1


async def test_status_of_an_empty_queue(db_url, capsys):
    code, out, _ = await cli(capsys, "status", "--database-url", db_url)
    assert code == 0
    assert "empty" in out and "none has called in yet" in out


async def test_requeue_fixes_task_counters_and_the_tasks_complete(app_client, db_url, capsys):
    client = await app_client()
    seeded = await seed_queue(client)
    code, out, _ = await cli(capsys, "requeue", "--model", "m-b", "--database-url", db_url)
    assert code == 0
    assert "requeued 3 failed input(s) of model m-b in 2 task(s)" in out

    for task_id, n in ((seeded.half_failed, 1), (seeded.failed, 2)):
        row = await task_row(db_url, task_id)
        assert (row["remaining"], row["failed"]) == (n, 0)
        assert row["error"] is None and row["error_code"] is None and row["finished_at"] is None
        resp = await client.get(f"/tasks/{task_id}", headers=CLIENT)
        assert (await resp.json())["status"] != "failed"

    batch = await claim(client, ["m-b"], worker="w3")
    assert sorted(i["input"] for i in batch["items"]) == ["b1", "c0", "c1"]
    assert all(i["attempts"] == 1 for i in batch["items"])  # a fresh set of attempts
    await post_results(client, "w3", batch["lease"], [i["id"] for i in batch["items"]], [])
    for task_id in (seeded.half_failed, seeded.failed):
        resp = await client.get(f"/tasks/{task_id}/result", headers=CLIENT)
        assert resp.status == 200, await resp.text()
        assert len((await resp.json())["data"]) == 2
        assert (await task_row(db_url, task_id))["finished_at"] is not None


async def test_requeue_older_than_takes_some_inputs_and_keeps_the_rest_failed(
    app_client, db_url, capsys
):
    seeded = await seed_queue(await app_client())
    await execute(
        db_url,
        "UPDATE embedq_item SET completed_at = now() - interval '2 hours' WHERE error = 'boom-c0'",
    )
    code, out, _ = await cli(capsys, "requeue", "--older-than", "3600", "--database-url", db_url)
    assert code == 0 and "requeued 1 failed input(s) in 1 task(s)" in out
    row = await task_row(db_url, seeded.failed)
    assert (row["remaining"], row["failed"]) == (1, 1)
    assert row["error"] == "boom-c1" and row["finished_at"] is None
    other = await task_row(db_url, seeded.half_failed)
    assert (other["remaining"], other["failed"], other["error"]) == (0, 1, "boom-b")


async def test_requeue_one_task(app_client, db_url, capsys):
    seeded = await seed_queue(await app_client())
    code, out, _ = await cli(
        capsys, "requeue", "--task", seeded.half_failed, "--database-url", db_url
    )
    assert code == 0 and "requeued 1 failed input(s) in 1 task(s)" in out
    assert (await task_row(db_url, seeded.failed))["failed"] == 2


async def test_requeue_with_nothing_to_do_exits_zero(app_client, db_url, capsys):
    await seed_queue(await app_client())
    code, out, _ = await cli(capsys, "requeue", "--model", "m-a", "--database-url", db_url)
    assert code == 0 and "nothing to requeue" in out
    code, _, err = await cli(capsys, "requeue", "--task", "nope", "--database-url", db_url)
    assert code == 2 and "not a task id" in err


async def test_purge_needs_yes_and_a_model(app_client, db_url, capsys):
    await seed_queue(await app_client())
    code, out, _ = await cli(capsys, "purge", "--model", "m-a", "--database-url", db_url)
    assert code == 1
    assert "would purge 3 pending input(s) of model m-a in 1 task(s)" in out
    assert await execute(db_url, "SELECT count(*) FROM embedq_item WHERE state='pending'") == 3
    code, _, err = await cli(capsys, "purge", "--yes", "--database-url", db_url)
    assert code == 2 and "--model is required" in err


async def test_purge_deletes_unstarted_tasks_and_fails_the_rest(app_client, db_url, capsys):
    client = await app_client()
    seeded = await seed_queue(client)
    partial = seeded.pending
    held = await claim(client, ["m-a"], max_items=2, worker="w1")  # a0, a1 of it; a2 waits
    unstarted = await submit(client, "m-a", ["e0", "e1"])
    other_model = await submit(client, "m-b", ["keep"])

    code, out, _ = await cli(capsys, "purge", "--model", "m-a", "--yes", "--database-url", db_url)
    assert code == 0
    assert "deleted 1 task(s) with 2 input(s)" in out and "failed 1 pending input(s)" in out

    resp = await client.get(f"/tasks/{unstarted}", headers=CLIENT)
    assert resp.status == 404
    row = await task_row(db_url, partial)
    assert (row["remaining"], row["failed"], row["error_code"]) == (2, 1, "purged")
    assert (await task_row(db_url, other_model))["remaining"] == 1
    assert (await task_row(db_url, seeded.processing))["remaining"] == 1  # in a worker's hands

    # The held inputs still finish; the task ends failed with the operator's reason.
    await post_results(client, "w1", held["lease"], [i["id"] for i in held["items"]], [])
    row = await task_row(db_url, partial)
    assert row["remaining"] == 0 and row["finished_at"] is not None
    body = await (await client.get(f"/tasks/{partial}", headers=CLIENT)).json()
    assert body["status"] == "failed" and "purged" in str(body)

    # A requeue does not bring purged inputs back.
    code, out, _ = await cli(capsys, "requeue", "--model", "m-a", "--database-url", db_url)
    assert code == 0 and "nothing to requeue" in out


async def test_tokens_suggests_fresh_tokens_without_a_database(capsys):
    code, out, _ = await cli(capsys, "tokens")
    assert code == 0
    lines = dict(line.strip().split("=", 1) for line in out.splitlines() if "=" in line)
    assert set(lines) == {"AUTH_TOKEN", "WORKER_TOKEN"}
    assert all(len(token) >= 40 for token in lines.values())
    assert lines["AUTH_TOKEN"] != lines["WORKER_TOKEN"]


async def test_unmigrated_database_says_to_migrate(pg_url, capsys):
    from tests.conftest import with_database

    name = "embedq_bare_" + uuid.uuid4().hex[:8]
    await execute(pg_url, f"CREATE DATABASE {name}")
    try:
        code, _, err = await cli(capsys, "status", "--database-url", with_database(pg_url, name))
        assert code == 2 and "embedq-server migrate" in err
    finally:
        await execute(pg_url, f"DROP DATABASE {name} WITH (FORCE)")
