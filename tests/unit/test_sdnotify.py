"""sd_notify against a fake systemd: a datagram socket standing in for $NOTIFY_SOCKET.

One module, embedq_common.sdnotify, used by both the server and the worker.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from types import ModuleType

import pytest

import embedq_common.sdnotify as sdnotify_module

TICK = 0.02  # seconds between watchdog pings in the loop tests


@pytest.fixture
def sd() -> ModuleType:
    return sdnotify_module


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test run itself may be under systemd (CI in a unit): never talk to the real one.
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


@pytest.fixture(params=["path", "abstract"])
def manager(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[socket.socket]:
    """A bound socket playing systemd, on a file path or in the abstract namespace."""
    if request.param == "abstract":
        name = f"embedq-test-{uuid.uuid4().hex}"
        with _receiver("\0" + name) as sock:
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
            yield sock
    else:
        # A short directory: Unix socket paths are limited to 107 bytes.
        with tempfile.TemporaryDirectory(prefix="sdn") as tmp:
            path = os.path.join(tmp, "notify")
            with _receiver(path) as sock:
                monkeypatch.setenv("NOTIFY_SOCKET", path)
                yield sock


def _drain(sock: socket.socket) -> list[str]:
    """Every datagram waiting now, without blocking."""
    got = []
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while True:
            got.append(sock.recv(4096).decode())
    except BlockingIOError:
        return got
    finally:
        sock.settimeout(timeout)


def test_states_reach_the_manager(sd: ModuleType, manager: socket.socket) -> None:
    assert sd.ready() is True
    assert sd.status("serving on 127.0.0.1:8000") is True
    assert sd.watchdog() is True
    assert sd.stopping() is True
    assert sd.notify("EXTEND_TIMEOUT_USEC=5000000") is True
    assert [manager.recv(4096).decode() for _ in range(5)] == [
        "READY=1",
        "STATUS=serving on 127.0.0.1:8000",
        "WATCHDOG=1",
        "STOPPING=1",
        "EXTEND_TIMEOUT_USEC=5000000",
    ]


def test_no_socket_is_a_quiet_no_op(sd: ModuleType) -> None:
    assert sd.ready() is False
    assert sd.watchdog() is False


@pytest.mark.parametrize("value", ["", "vsock:2:1234", "relative/path"])
def test_unsupported_address_is_a_no_op(
    sd: ModuleType, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sd.ready() is False


def test_vanished_socket_returns_false(
    sd: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert sd.ready() is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("1000", None, 0.0005),
        ("30000000", "other", None),  # inherited from our parent: not ours to ping
        (None, None, None),
        ("", None, None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval(
    sd: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    usec: str | None,
    pid: str | None,
    expected: float | None,
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid == "self":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    elif pid == "other":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sd.watchdog_interval() == expected


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


class Inbox:
    """Reads the manager socket all the time, as systemd does: an unread socket fills
    after ~10 datagrams (net.unix.max_dgram_qlen) and then blocks the sender."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.got: list[str] = []
        sock.setblocking(False)
        self.task = asyncio.create_task(self._read(), name="inbox")

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.got.append((await loop.sock_recv(self.sock, 4096)).decode())

    def take(self) -> list[str]:
        got, self.got = self.got, []
        return got

    async def close(self) -> None:
        await _stop(self.task)


async def _settle() -> None:
    # A tick whose check already passed may still send one ping: let it land.
    await asyncio.sleep(TICK * 3)


async def test_watchdog_loop_pings_only_while_healthy(
    sd: ModuleType, manager: socket.socket
) -> None:
    healthy = True

    async def check() -> bool:
        return healthy

    inbox = Inbox(manager)
    task = asyncio.create_task(sd.watchdog_loop(check, TICK), name="watchdog")
    try:
        await asyncio.sleep(TICK * 10)
        pings = inbox.take()
        assert len(pings) >= 3 and set(pings) == {"WATCHDOG=1"}

        healthy = False
        await _settle()
        inbox.take()
        await asyncio.sleep(TICK * 10)
        assert inbox.take() == []
        assert not task.done()

        healthy = True
        await asyncio.sleep(TICK * 10)
        assert len(inbox.take()) >= 3
    finally:
        await _stop(task)
        await inbox.close()


async def test_watchdog_loop_treats_a_failing_or_hung_check_as_unhealthy(
    sd: ModuleType, manager: socket.socket
) -> None:
    mode = "raise"
    release = asyncio.Event()

    async def check() -> bool:
        if mode == "raise":
            raise ConnectionError("database gone")
        if mode == "hang":
            await release.wait()  # a query that never returns
        return True

    inbox = Inbox(manager)
    task = asyncio.create_task(sd.watchdog_loop(check, TICK), name="watchdog")
    try:
        await asyncio.sleep(TICK * 10)
        assert inbox.take() == []
        assert not task.done()  # the loop survives a raising check

        mode = "hang"
        await asyncio.sleep(TICK * 10)
        assert inbox.take() == []
        assert not task.done()  # the hung check timed out instead of blocking the loop

        mode = "ok"
        await asyncio.sleep(TICK * 10)
        assert len(inbox.take()) >= 3
    finally:
        release.set()
        await _stop(task)
        await inbox.close()


async def test_watchdog_loop_always_stops_when_cancelled(
    sd: ModuleType, manager: socket.socket
) -> None:
    # On Python 3.11, asyncio.wait_for could swallow a cancellation that arrived as the
    # check finished, and the server's shutdown then hung on this task.
    async def check() -> bool:
        return True

    inbox = Inbox(manager)
    try:
        for i in range(200):
            task = asyncio.create_task(sd.watchdog_loop(check, 0.001), name="watchdog")
            for _ in range(i % 7):
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=1)
            assert done, f"cancellation swallowed (round {i})"
    finally:
        await inbox.close()


def test_a_manager_that_stops_reading_costs_at_most_the_send_timeout(
    sd: ModuleType, manager: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sd, "SEND_TIMEOUT", 0.05)
    assert sd.watchdog() is True
    started = time.monotonic()
    # Far past the socket's queue: sends start failing after the timeout, never hang.
    assert not all(sd.watchdog() for _ in range(1000))
    assert time.monotonic() - started < 2
