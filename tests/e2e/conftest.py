"""End-to-end fixtures: a database per test (made synchronously), an Ollama double as a
child process, and the real server and worker processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import TEMPLATE, with_database
from tests.doubles.common import spawn_double
from tests.e2e.procs import Proc, start_server, start_worker, wait_for_log


@pytest.fixture
def e2e_db(pg_url: str, template_url: str) -> Iterator[str]:
    name = "embedq_e2e_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    yield with_database(pg_url, name)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def ollama_url() -> Iterator[str]:
    with spawn_double("tests.doubles.ollama") as url:
        yield url


@pytest.fixture
def server(e2e_db: str) -> Iterator[Proc]:
    proc = start_server(e2e_db)
    yield proc
    proc.stop()


@pytest.fixture
def worker(server: Proc, ollama_url: str) -> Iterator[Proc]:
    proc = start_worker(server.url, ollama_url)
    wait_for_log(proc, "embedq-worker")
    yield proc
    proc.stop()
