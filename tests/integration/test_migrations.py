"""Migrations: the schema they build, two servers migrating at once, and a migration
killed half-way (yoyo's lock row left behind) not blocking the next start."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from embedq_server.database import apply_migrations, migrations_dir
from tests.conftest import with_database
from tests.e2e.procs import REPO_ROOT


@pytest.fixture
def empty_db(pg_url: str) -> Iterator[str]:
    name = "embedq_mig_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield with_database(pg_url, name)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def applied(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT migration_id FROM _yoyo_migration ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def expected_ids() -> list[str]:
    return sorted(
        p.stem for p in migrations_dir().glob("*.sql") if not p.stem.endswith(".rollback")
    )


def test_migrations_build_the_expected_schema(empty_db: str) -> None:
    assert apply_migrations(empty_db) == expected_ids()
    assert apply_migrations(empty_db) == []  # idempotent
    with psycopg.connect(empty_db) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
        functions = {
            r[0] for r in conn.execute("SELECT proname FROM pg_proc WHERE proname LIKE 'embedq%'")
        }
        indexes = {
            r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname='public'")
        }
    assert {"embedq_task", "embedq_item", "embedq_worker", "embedq_cache"} <= tables
    assert "embedq_settle" in functions
    assert "embedq_item_pending_idx" in indexes  # the claim path's partial index


def test_two_servers_migrating_at_once_apply_each_migration_once(empty_db: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "embedq_server.cli", "migrate", "--database-url", empty_db],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert applied(empty_db) == expected_ids()
    # Each migration was applied by exactly one of them.
    applied_lines = [
        line for out in outputs for line in out.splitlines() if "Applying 0001" in line
    ]
    assert len(applied_lines) == 1, outputs


def test_a_killed_migration_does_not_block_the_next_start(empty_db: str) -> None:
    apply_migrations(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        # What a migrator killed mid-way leaves behind: yoyo's lock row of a dead process.
        conn.execute("INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, now(), 999999)")
    result = subprocess.run(
        [sys.executable, "-m", "embedq_server.cli", "migrate", "--database-url", empty_db],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM yoyo_lock").fetchone() == (0,)
