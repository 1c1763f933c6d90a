"""The server's statements keep to their indexes under generic plans, however stale the
table's statistics are.

asyncpg prepares each statement once per connection, and PostgreSQL plans it for the
statistics of the moment. A busy queue outgrows autovacuum's analyze, and a retention
statement planned as "a sequential scan that stops after LIMIT rows" then reads (and,
setting hint bits, dirties) the whole table on every maintenance pass when no row is old
enough: seconds of PostgreSQL work per pass on a table of gigabytes.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import pytest

from embedq_server.keys import POOL
from embedq_server.sql import QUERIES
from tests.helpers import make_settings

ROWS = 5000  # enough that a full scan costs more than the index; never analyzed


async def generic_plan(conn: asyncpg.Connection, name: str, types: str, args: str) -> str:
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute(f"PREPARE {name}{types} AS {QUERIES[name]}")
    rows = await conn.fetch(f"EXPLAIN (COSTS OFF) EXECUTE {name}{args}")
    return "\n".join(r[0] for r in rows)


async def test_cache_retention_uses_its_index_without_statistics(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            """INSERT INTO embedq_cache (scope, model, dimensions, text_hash, vector, tokens)
               SELECT '', 'm', 4, sha256(i::text::bytea), '\\x00000000'::bytea, 1
               FROM generate_series(1, $1) i""",
            ROWS,
        )
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


async def prepared_generic_plan(conn: asyncpg.Connection, name: str) -> str:
    """The generic plan of a named statement, its parameter types inferred from the text."""
    n_params = max(int(m) for m in re.findall(r"\$(\d+)", QUERIES[name]))
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute(f"PREPARE {name} AS {QUERIES[name]}")
    nulls = ", ".join(["NULL"] * n_params)
    rows = await conn.fetch(f"EXPLAIN (COSTS OFF) EXECUTE {name}({nulls})")
    return "\n".join(r[0] for r in rows)


async def test_hot_statements_keep_to_indexes_under_generic_plans(db_url: str) -> None:
    """The server runs its statements with generic plans (PG_PLAN_CACHE_MODE): planned once
    without the parameters' values, the submit, claim, heartbeat, completion and read-back
    must still find their rows through indexes on a queue of thousands of inputs."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            """INSERT INTO embedq_task (id, owner, fingerprint, model, dimensions, n_inputs,
                                        remaining)
               SELECT md5(i::text)::uuid, 'o', sha256(i::text::bytea), 'm', 0, 1, 1
               FROM generate_series(1, $1) i""",
            ROWS,
        )
        await conn.execute(
            """INSERT INTO embedq_item (task_id, idx, model, input, state, lease_token,
                                        lease_expires)
               SELECT md5(i::text)::uuid, 0, 'm', 'text ' || i,
                      CASE WHEN i % 10 = 0 THEN 'processing' ELSE 'pending' END,
                      CASE WHEN i % 10 = 0 THEN md5((i % 7)::text)::uuid END,
                      CASE WHEN i % 10 = 0 THEN now() + interval '1 minute' END
               FROM generate_series(1, $1) i""",
            ROWS,
        )
        await conn.execute(
            """INSERT INTO embedq_cache (scope, model, dimensions, text_hash, vector, tokens)
               SELECT 'o', 'm', 0, sha256(i::text::bytea), '\\x00000000'::bytea, 1
               FROM generate_series(1, $1) i""",
            ROWS,
        )
        await conn.execute("ANALYZE")
        plans = {
            name: await prepared_generic_plan(conn, name)
            for name in (
                "submit_tasks",
                "claim_items",
                "extend_lease",
                "complete_items",
                "fail_items",
                "get_tasks_with_results",
            )
        }
    finally:
        await conn.close()
    for name, plan in plans.items():
        for table in ("embedq_item", "embedq_task", "embedq_cache"):
            assert f"Seq Scan on {table}" not in plan, (name, plan)
    # The claim's second scan is bounded by the floor, not walked from the index's start.
    assert "Index Cond: (id >= $6)" in plans["claim_items"].split("CTE picked")[1], plans
    assert "embedq_item_lease_idx" in plans["complete_items"], plans["complete_items"]
    assert "embedq_item_lease_idx" in plans["extend_lease"], plans["extend_lease"]
    assert "embedq_cache_pkey" in plans["submit_tasks"], plans["submit_tasks"]
    assert "embedq_task_fingerprint_idx" in plans["submit_tasks"], plans["submit_tasks"]


async def test_server_statements_run_with_generic_plans_unless_told(app_client: Any) -> None:
    client = await app_client()
    pool = client.server.app[POOL]
    assert await pool.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
    other = await app_client(plan_cache_mode="auto")
    assert await other.server.app[POOL].fetchval("SHOW plan_cache_mode") == "auto"


def test_plan_cache_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="PG_PLAN_CACHE_MODE must be one of"):
        make_settings(plan_cache_mode="fastest")
