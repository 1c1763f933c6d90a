"""The system under test, started for one benchmark run: a database of its own (on
DATABASE_URL's server, or an embedded PostgreSQL), the real `embedq-server` and
`embedq-worker` processes, the GPU-like Ollama double, and the delaying proxy on demand."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from .procs import Child, spawn, wait_for_log, wait_healthy, wait_listening

CLIENT_TOKEN = "bench-client-token"
WORKER_TOKEN = "bench-worker-token"
GPU_MODEL = "nomic-embed-text"  # served by the Ollama double
ZERO_MODEL = "bench-zero"  # served by the zero-cost backend
DIM = 768  # the double's and the zero backend's vector size
FIXED_MS = 5.0  # the double's cost per call ...
PER_TEXT_MS = 0.5  # ... and per text in the call
# bench.nodb's queues: in memory; writing behind; writing behind after a probe
NODB_MODES = ("nodb", "behind", "behind-probe")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """DATABASE_URL's server, or an embedded PostgreSQL in a temporary directory."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    from embedq_server.database import embedded_postgres

    with tempfile.TemporaryDirectory(prefix="embedq-bench-pg-") as tmp:
        os.chmod(tmp, 0o755)  # the embedded server runs as an unprivileged user under root
        with embedded_postgres(Path(tmp)) as url:
            yield url


@contextlib.contextmanager
def bench_database(server_url: str, settings: Mapping[str, str] | None = None) -> Iterator[str]:
    """A fresh database with the schema, dropped afterwards, so runs never see each other.
    `settings` (e.g. synchronous_commit=off) apply to every session on it, to try a
    PostgreSQL setting without touching embedq's code."""
    import psycopg
    from psycopg import sql

    from embedq_server.database import apply_migrations

    name = "embedq_bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
        for key, value in (settings or {}).items():
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    sql.Identifier(name), sql.Identifier(key), sql.Literal(value)
                )
            )
    url = _with_database(server_url, name)
    try:
        apply_migrations(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@dataclass
class Stack:
    """The running processes; workers and the proxy come and go between scenarios."""

    db_url: str
    postgres_marker: str = ""  # the embedded cluster's directory, to find its processes
    server: Child | None = None
    double: Child | None = None
    proxy: Child | None = None
    floor: Child | None = None
    ideal: Child | None = None  # bench.ideal (or bench.ideal_pull), one mode at a time
    puller: Child | None = None  # bench.ideal_pull's puller, with its server
    workers: dict[str, Child] = field(default_factory=dict)
    log_dir: Path | None = None  # the children's logs

    def start_server(self, **env: str) -> Child:
        self.server = self._spawn_server("server", "embedq_server.cli", env)
        return self.server

    def _spawn_server(self, name: str, module: str, env: Mapping[str, str]) -> Child:
        """embedq-server (or bench.nodb, the same server with its queue in memory)."""
        port = free_port()
        child = spawn(
            name,
            module,
            ["serve"],
            log_dir=self.log_dir,
            env={
                "DATABASE_URL": self.db_url,
                "SERVER_HOST": "127.0.0.1",
                "SERVER_PORT": str(port),
                "AUTH_TOKEN": CLIENT_TOKEN,
                "WORKER_TOKEN": WORKER_TOKEN,
                **env,
            },
        )
        wait_healthy(child, f"http://127.0.0.1:{port}")
        return child

    def start_double(self) -> Child:
        self.double = spawn(
            "ollama-double",
            "tests.doubles.ollama",
            [
                "--port", "0",
                "--dim", str(DIM),
                "--fixed-ms", str(FIXED_MS),
                "--per-text-ms", str(PER_TEXT_MS),
            ],
            log_dir=self.log_dir,
        )  # fmt: skip
        wait_listening(self.double)
        return self.double

    def start_worker(self, name: str, *, server_url: str | None = None, **env: str) -> Child:
        """A worker; by default the GPU-like one (Ollama double), or e.g.
        EMBEDDING_MODEL="zero:bench-zero" for the zero-cost backend."""
        assert self.server is not None
        child = self._spawn_worker(name, server_url or self.server.url, env)
        self.workers[name] = child
        return child

    def _spawn_worker(self, name: str, server_url: str, env: Mapping[str, str]) -> Child:
        assert self.double is not None
        child = spawn(
            f"worker-{name}",
            "embedq_worker.cli",
            env={
                "SERVER_URL": server_url,
                "WORKER_TOKEN": WORKER_TOKEN,
                "WORKER_NAME": f"bench-{name}",
                "OLLAMA_URL": self.double.url,
                "EMBEDDING_MODEL": GPU_MODEL,
                "ZERO_DIM": str(DIM),
                **env,
            },
            log_dir=self.log_dir,
        )
        wait_for_log(child, "embedq-worker ")
        return child

    def stop_worker(self, name: str) -> None:
        child = self.workers.pop(name, None)
        if child is not None:
            child.stop()

    def start_proxy(self, delay_ms: float) -> Child:
        assert self.server is not None
        target = self.server.url.removeprefix("http://")
        args = ["--target", target, "--delay-ms", str(delay_ms)]
        self.proxy = spawn("proxy", "bench.proxy", args, log_dir=self.log_dir)
        wait_listening(self.proxy)
        return self.proxy

    def start_floor(self) -> Child:
        self.floor = spawn("floor", "bench.floor", ["--port", "0"], log_dir=self.log_dir)
        wait_listening(self.floor)
        return self.floor

    def start_ideal(
        self, mode: str, server_args: Sequence[str] = (), puller_args: Sequence[str] = ()
    ) -> Child:
        """bench.ideal in `mode`, or for "pull" ("pull-greedy") bench.ideal_pull's server
        and its timed (greedy) puller, with their extra arguments; for "nodb" ("behind",
        "behind-probe"), embedq's server with its queue in memory (and its writes behind it,
        after a probe: bench.nodb) and embedq's worker."""
        assert self.double is not None
        if mode in NODB_MODES:
            self.ideal = self._spawn_server(f"{mode}-server", "bench.nodb", {"BENCH_QUEUE": mode})
            self.puller = self._spawn_worker(mode, self.ideal.url, {})
            return self.ideal
        if mode.startswith("pull"):
            self.ideal = spawn(
                "ideal-pull",
                "bench.ideal_pull",
                ["--port", "0", *server_args],
                log_dir=self.log_dir,
            )
            wait_listening(self.ideal)
            puller = "greedy" if mode == "pull-greedy" else "timed"
            args = ["--puller", self.ideal.url, "--double", self.double.url, "--mode", puller]
            args += puller_args
            self.puller = spawn("ideal-puller", "bench.ideal_pull", args, log_dir=self.log_dir)
            wait_for_log(self.puller, "pulling from")
            return self.ideal
        args = ["--port", "0", "--double", self.double.url, "--mode", mode]
        self.ideal = spawn(f"ideal-{mode}", "bench.ideal", args, log_dir=self.log_dir)
        wait_listening(self.ideal)
        return self.ideal

    def stop_ideal(self) -> None:
        for child in (self.puller, self.ideal):
            if child is not None:
                child.stop()
        self.ideal = self.puller = None

    def stop_floor(self) -> None:
        if self.floor is not None:
            self.floor.stop()
            self.floor = None

    def stop_proxy(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None

    def stop(self) -> None:
        """Workers first (they post what they hold), then the rest."""
        for name in list(self.workers):
            self.stop_worker(name)
        self.stop_proxy()
        self.stop_floor()
        self.stop_ideal()
        for child in (self.server, self.double):
            if child is not None:
                child.stop()

    def children(self) -> list[Child]:
        found = [
            c
            for c in (self.server, self.double, self.proxy, self.floor, self.ideal, self.puller)
            if c is not None
        ]
        return found + list(self.workers.values())


@contextlib.contextmanager
def running_stack(pg_settings: Mapping[str, str] | None = None) -> Iterator[Stack]:
    """PostgreSQL, a bench database, the server and the double; stopped in reverse."""
    with postgres_server() as pg_url, bench_database(pg_url, pg_settings) as db_url:
        host = parse_qs(urlsplit(db_url).query).get("host", [""])[0]  # embedded: its socket dir
        logs = Path(tempfile.mkdtemp(prefix="embedq-bench-logs-"))
        stack = Stack(db_url, postgres_marker=host, log_dir=logs)
        failed = False
        try:
            stack.start_double()
            stack.start_server()
            yield stack
        except BaseException:
            failed = True
            print(f"the processes' logs are kept in {logs}", file=sys.stderr)
            raise
        finally:
            stack.stop()
            if not failed:
                shutil.rmtree(logs, ignore_errors=True)
