"""Stopping the server with the embedded database: however many times the stop signal
comes (a shell's trap after the terminal's Ctrl-C sends it again at once), the server
finishes its shutdown and stops the PostgreSQL it started, leaving none running."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.e2e.procs import START_TIMEOUT, _spawn, wait_healthy

STOP_TIMEOUT = 60.0  # seconds for the server to stop, database included


def _alive(pid: int) -> bool:
    """Running, not a zombie: its parent is init, which may reap it a little later."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def _postmaster_pid(data_dir: Path) -> int:
    found = list(data_dir.rglob("postmaster.pid"))
    assert len(found) == 1, found
    return int(found[0].read_text().splitlines()[0])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_repeated_stop_signals_still_stop_the_embedded_database(
    tmp_path: Path, sig: signal.Signals
) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    server = _spawn(
        ["embedq_server.cli", "serve"],
        {"EMBEDQ_DATA_DIR": str(data_dir), "SERVER_PORT": str(port)},
        "server-stop",
    )
    server.url = f"http://127.0.0.1:{port}"
    postgres = 0
    try:
        wait_healthy(server.url, server, timeout=START_TIMEOUT * 3)  # initdb on first start
        postgres = _postmaster_pid(data_dir)
        assert _alive(postgres)
        # The first signal starts the shutdown; the rest land all through it.
        deadline = time.monotonic() + STOP_TIMEOUT
        while server.proc.poll() is None and time.monotonic() < deadline:
            server.signal(sig)
            time.sleep(0.005)
        assert server.proc.poll() == 0, server.log()
        assert "embedded PostgreSQL stopped" in server.log()
        assert not _alive(postgres), "the embedded PostgreSQL was left running"
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        if postgres and _alive(postgres):  # what the old server left behind
            os.kill(postgres, signal.SIGQUIT)
