"""Run embedq's real processes (server, worker) for end-to-end tests, and stop them with
real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.conftest import free_port
from tests.helpers import CLIENT_TOKEN, OTHER_CLIENT_TOKEN, WORKER_TOKEN

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0  # seconds


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _spawn(args: list[str], env: dict[str, str], name: str) -> Proc:
    log = tempfile.NamedTemporaryFile(prefix=f"embedq-{name}-", suffix=".log", delete=False)
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    full_env.pop("DATABASE_URL", None) if "DATABASE_URL" not in env else None
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return Proc(proc, Path(log.name))


def wait_healthy(url: str, proc: Proc, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"process exited {proc.proc.returncode}:\n{proc.log()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout}s:\n{proc.log()}")


def server_env(database_url: str, port: int, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "SERVER_HOST": "127.0.0.1",
        "SERVER_PORT": str(port),
        "AUTH_TOKEN": f"{CLIENT_TOKEN},{OTHER_CLIENT_TOKEN}",
        "WORKER_TOKEN": WORKER_TOKEN,
        "MAINTENANCE_INTERVAL": "0.5",
        **extra,
    }


def start_server(database_url: str, port: int | None = None, **extra: str) -> Proc:
    port = port or free_port()
    proc = _spawn(["embedq_server.cli", "serve"], server_env(database_url, port, **extra), "server")
    proc.url = f"http://127.0.0.1:{port}"
    wait_healthy(proc.url, proc)
    return proc


def start_worker(server_url: str, ollama_url: str, **extra: str) -> Proc:
    env = {
        "SERVER_URL": server_url,
        "WORKER_TOKEN": WORKER_TOKEN,
        "OLLAMA_URL": ollama_url,
        "EMBEDDING_MODEL": "nomic-embed-text",
        "POLL_INTERVAL": "0.2",
        "CLAIM_WAIT": "5",
        **extra,
    }
    return _spawn(["embedq_worker.cli"], env, "worker")


def wait_for_log(proc: Proc, needle: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in proc.log():
            return
        if proc.proc.poll() is not None:
            raise RuntimeError(f"process exited {proc.proc.returncode}:\n{proc.log()}")
        time.sleep(0.05)
    raise TimeoutError(f"{needle!r} not seen in {timeout}s:\n{proc.log()}")


@contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.stop()


def tail(stream: IO[str]) -> str:
    return stream.read()
