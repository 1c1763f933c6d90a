"""Shared fixtures: a real PostgreSQL (DATABASE_URL, or an embedded one started once per
session), a template database with the migrations applied once and cloned per test, and
helpers to run embedq's processes."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from embedq_server.database import apply_migrations, embedded_postgres

TEMPLATE = "embedq_template"


def with_database(url: str, name: str) -> str:
    """The same server address, another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The PostgreSQL server the tests use (its maintenance database)."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    with tempfile.TemporaryDirectory(prefix="embedq-test-pg-") as tmp:
        os.chmod(tmp, 0o755)  # the embedded server runs as an unprivileged user under root
        with embedded_postgres(Path(tmp)) as url:
            yield url


@pytest.fixture(scope="session")
def template_url(pg_url: str) -> str:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    url = with_database(pg_url, TEMPLATE)
    apply_migrations(url)
    return url


@pytest.fixture
async def db_url(pg_url: str, template_url: str) -> AsyncIterator[str]:
    """A fresh database with the schema, cloned from the template for this test."""
    name = "embedq_t_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    finally:
        await admin.close()
    yield with_database(pg_url, name)
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def app_client(db_url: str, aiohttp_client: Any) -> Any:
    """Make an in-process test client of the server on this test's database. Asking for
    db_url first makes the client close before the database is dropped."""
    from embedq_server.app import create_app
    from tests.helpers import make_settings

    async def make(**overrides: Any) -> Any:
        return await aiohttp_client(create_app(make_settings(**overrides), db_url))

    return make
