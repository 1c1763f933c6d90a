"""Every ```sql block of docs/ops.md runs without error against a migrated database with a
queue in it; the requeue and purge blocks do what the text says, and after every block the
tasks' counters still agree with their inputs."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

from tests.integration.test_ops_views import seed_queue

DOC = Path(__file__).resolve().parents[2] / "docs" / "ops.md"
SQL_BLOCK = re.compile(r"^```sql\n(.*?)^```", re.MULTILINE | re.DOTALL)
VIEWS = ("embedq_queue", "embedq_workers", "embedq_failures", "embedq_throughput")

# Where the docs' examples point: requeue `mxbai-embed-large`, purge `nomic-embed-text`.
PURGED = "nomic-embed-text"
REQUEUED = "mxbai-embed-large"

# A task's counters as the API reads them, against what its inputs say.
INCONSISTENT_TASKS = """
SELECT t.id, t.remaining, t.failed, t.error, t.finished_at, c.open, c.failed AS failed_items
FROM embedq_task t
JOIN LATERAL (
    SELECT count(*) FILTER (WHERE state IN ('pending', 'processing')) AS open,
           count(*) FILTER (WHERE state = 'failed') AS failed
    FROM embedq_item WHERE task_id = t.id
) c ON true
WHERE t.remaining <> c.open
   OR t.failed <> c.failed
   OR (t.finished_at IS NULL) <> (t.remaining > 0)
   OR (t.error IS NULL) <> (t.failed = 0)
"""


def sql_blocks() -> list[str]:
    return [block.strip() for block in SQL_BLOCK.findall(DOC.read_text(encoding="utf-8"))]


def test_the_doc_covers_the_everyday_questions():
    blocks = sql_blocks()
    text = "\n".join(blocks)
    assert len(blocks) >= 15
    for needle in (*VIEWS, "embedq_requeue_failed(", "embedq_purge_pending(",
                   "pg_stat_user_tables", "VACUUM", "lease_expires < now()"):  # fmt: skip
        assert needle in text, needle


async def test_every_sql_block_runs_and_keeps_tasks_consistent(app_client, db_url):
    # Maintenance off for the test: the stuck-lease query must find the stuck input.
    client = await app_client(maintenance_interval=3600)
    seeded = await seed_queue(client, a=PURGED, b=REQUEUED)
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "UPDATE embedq_item SET lease_expires = now() - interval '1 minute' "
            "WHERE state = 'processing';"
            "UPDATE embedq_item SET completed_at = now() - interval '1 hour' "
            "WHERE state = 'failed'"
        )
        for n, block in enumerate(sql_blocks(), 1):
            where = f"docs/ops.md sql block {n}:\n{block}"
            if "embedq_requeue_failed(" in block:
                before = await failed_items(conn)
                row = await conn.fetchrow(block)
                assert row is not None, where
                after = await failed_items(conn)
                assert row["items"] == before - after, where
                if "only_model" in block:
                    assert (row["items"], row["tasks"]) == (3, 2), where
                    assert after == 0
            elif "embedq_purge_pending(" in block:
                row = await conn.fetchrow(block)
                assert row is not None, where
                assert (row["deleted_tasks"], row["deleted_items"]) == (1, 3), where
                pending = await conn.fetchval(
                    "SELECT count(*) FROM embedq_item WHERE state = 'pending' AND model = $1",
                    PURGED,
                )
                assert pending == 0, where
                assert (
                    await conn.fetchval(
                        "SELECT count(*) FROM embedq_task WHERE id = $1", seeded.pending
                    )
                    == 0
                )
            else:
                await conn.execute(block)
            bad = await conn.fetch(INCONSISTENT_TASKS)
            assert not bad, f"{where}\nleft tasks inconsistent: {[dict(r) for r in bad]}"
        # The stuck input and the unserved model really show up.
        stuck = next(b for b in sql_blocks() if "lease_expires < now()" in b)
        assert len(await conn.fetch(stuck)) == 1
    finally:
        await conn.close()


async def failed_items(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM embedq_item WHERE state = 'failed'")
    return count
