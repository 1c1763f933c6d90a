"""Statements keep to their indexes however stale the table's statistics are.

asyncpg prepares each statement once per connection, and PostgreSQL plans it for the
statistics of the moment. A busy queue outgrows autovacuum's analyze, and a retention
statement planned as "a sequential scan that stops after LIMIT rows" then reads (and,
setting hint bits, dirties) the whole table on every maintenance pass when no row is old
enough: seconds of PostgreSQL work per pass on a table of gigabytes. PL/pgSQL caches the
plans of a function's statements per connection in the same way (the settle below).
"""

from __future__ import annotations

import json
import uuid

import asyncpg

from embedq_server.sql import QUERIES

ROWS = 5000  # enough that a full scan costs more than the index; never analyzed


async def generic_plan(conn: asyncpg.Connection, name: str, types: str, args: str) -> str:
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute(f"PREPARE {name}{types} AS {QUERIES[name]}")
    rows = await conn.fetch(f"EXPLAIN (COSTS OFF) EXECUTE {name}{args}")
    return "\n".join(r[0] for r in rows)


async def fill_cache(conn: asyncpg.Connection, dimensions: int) -> None:
    """ROWS cached results of model 'm' in the global scope."""
    await conn.execute(
        """INSERT INTO embedq_cache (scope, model, dimensions, text_hash, vector, tokens)
           SELECT '', 'm', $2, sha256(i::text::bytea), '\\x00000000'::bytea, 1
           FROM generate_series(1, $1) i""",
        ROWS,
        dimensions,
    )


async def insert_tasks(conn: asyncpg.Connection, count: int) -> list[uuid.UUID]:
    """`count` tasks of one input each, still waiting for it."""
    rows = await conn.fetch(
        """INSERT INTO embedq_task (id, owner, fingerprint, model, dimensions, n_inputs,
                                    remaining)
           SELECT gen_random_uuid(), 'o', sha256(gen_random_uuid()::text::bytea), 'm', 0, 1, 1
           FROM generate_series(1, $1)
           RETURNING id""",
        count,
    )
    return [r["id"] for r in rows]


async def test_cache_retention_uses_its_index_without_statistics(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await fill_cache(conn, dimensions=4)
        plan = await generic_plan(conn, "prune_cache", "(float8, int)", "(86400, 1000)")
        # The cutoff is a day back, so a sequential scan would read every row for nothing.
        deleted = await conn.execute(QUERIES["prune_cache"], 86400.0, 1000)
    finally:
        await conn.close()
    assert "embedq_cache_created_idx" in plan, plan
    assert "Seq Scan on embedq_cache" not in plan, plan
    assert deleted == "DELETE 0"


async def test_result_retention_uses_its_index_without_statistics(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            """INSERT INTO embedq_task (id, owner, fingerprint, model, dimensions, n_inputs,
                                        remaining, finished_at)
               SELECT gen_random_uuid(), 'o', sha256(i::text::bytea), 'm', 0, 1, 0, now()
               FROM generate_series(1, $1) i""",
            ROWS,
        )
        plan = await generic_plan(conn, "prune_finished", "(float8, int)", "(86400, 1000)")
    finally:
        await conn.close()
    # Neither the selection nor the delete itself reads the whole table.
    assert "embedq_task_finished_idx" in plan, plan
    assert "embedq_task_pkey" in plan, plan
    assert "Seq Scan" not in plan, plan


async def test_metrics_scrape_reads_only_the_queue_not_the_stored_results(db_url: str) -> None:
    """A scrape must not read every stored vector: a busy queue keeps gigabytes of them."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            """INSERT INTO embedq_task (id, owner, fingerprint, model, dimensions, n_inputs,
                                        remaining)
               SELECT md5(i::text)::uuid, 'o', sha256(i::text::bytea), 'm', 0, 1, 0
               FROM generate_series(1, $1) i""",
            ROWS,
        )
        await conn.execute(
            """INSERT INTO embedq_item (task_id, idx, model, input, state, vector)
               SELECT md5(i::text)::uuid, 0, 'm', 'text ' || i,
                      CASE WHEN i % 100 = 0 THEN 'pending' ELSE 'completed' END,
                      CASE WHEN i % 100 = 0 THEN NULL ELSE '\\x00000000'::bytea END
               FROM generate_series(1, $1) i""",
            ROWS,
        )
        await conn.execute("ANALYZE embedq_item")
        rows = await conn.fetch("EXPLAIN (COSTS OFF) " + QUERIES["metrics_snapshot"])
        snapshot = await conn.fetchrow(QUERIES["metrics_snapshot"])
    finally:
        await conn.close()
    plan = "\n".join(r[0] for r in rows)
    assert "Seq Scan on embedq_item" not in plan, plan
    queue = json.loads(snapshot["queue"])
    assert [(r["model"], r["state"], r["items"]) for r in queue] == [("m", "pending", ROWS // 100)]


async def test_the_hand_ahead_probe_reads_by_index_without_statistics(db_url: str) -> None:
    """probe_request runs on the path of a request an idle worker waits for."""
    conn = await asyncpg.connect(db_url)
    try:
        await fill_cache(conn, dimensions=0)
        await insert_tasks(conn, ROWS)
        one = await generic_plan(
            conn,
            "probe_request",
            "(text, bytea, text, integer, text, text[])",
            "('o', '\\x00'::bytea, 'm', 0, '', ARRAY['x'])",
        )
    finally:
        await conn.close()
    assert "embedq_cache_pkey" in one and "embedq_task_fingerprint_idx" in one, one
    assert "Seq Scan on embedq_cache" not in one, one
    assert "Seq Scan on embedq_task" not in one, one


async def settle(conn: asyncpg.Connection, task_ids: list[uuid.UUID]) -> None:
    n = len(task_ids)
    await conn.fetchval(
        "SELECT embedq_settle_finished($1::uuid[], $2::boolean[], $3::text[], $4::text[])",
        task_ids,
        [False] * n,
        [None] * n,
        [None] * n,
    )


async def test_the_completion_settles_by_primary_key_after_the_table_outgrew_its_plans(
    db_url: str,
) -> None:
    """Every completion settles its tasks inside embedq_settle_finished, whose statements
    PL/pgSQL plans once per connection. Planned while the task table was small, they read
    the whole table on every completion from then on (until an analyze replans them): the
    completion statement of a 32-client run went 2 -> 8 ms over 40,000 requests, and c32
    from 62% to 52% of its ceiling, until the server reconnected."""
    conn = await asyncpg.connect(db_url)
    try:
        # autovacuum's analyze would replan the function and hide the stale plan.
        await conn.execute("ALTER TABLE embedq_task SET (autovacuum_enabled = off)")
        for _ in range(8):  # past PostgreSQL's five custom plans: the plan is cached now
            await settle(conn, await insert_tasks(conn, 3))
        await insert_tasks(conn, ROWS)  # the queue grows; no analyze runs
        batch = await insert_tasks(conn, 3)
        # This backend's counts not yet flushed to the shared statistics, which only
        # grow inside a transaction: the difference is what the settles read.
        scans = "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'embedq_task'"
        async with conn.transaction():
            before = await conn.fetchval(scans)
            for _ in range(3):
                await settle(conn, batch)
            after = await conn.fetchval(scans)
            remaining = await conn.fetch(
                "SELECT remaining FROM embedq_task WHERE id = ANY($1::uuid[])", batch
            )
    finally:
        await conn.close()
    assert after - before == 0
    assert [r["remaining"] for r in remaining] == [-2, -2, -2]  # it did settle them
