"""The one LISTEN connection of a server process, fanning notifications out to waiters.

Requests waiting for their task and workers waiting for work both wait here, so a process
holds one listening connection however many requests wait. The connection is pinged and
re-opened with backoff; after a reconnect every waiter is woken to re-check, since
notifications sent while it was down are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any

import asyncpg

log = logging.getLogger("embedq.listener")

DONE_CHANNEL = "embedq_done"  # payload: comma-separated task ids that finished or failed
WORK_CHANNEL = "embedq_work"  # payload: the model that has new pending work
PING_TIMEOUT = 3.0  # seconds
OWN_NOTIFY_GRACE = 0.05  # seconds: an own completion's NOTIFY wakes only if no announce came
BACKOFF_MAX = 10.0  # seconds between reconnect attempts, at most


class Listener:
    def __init__(self, url: str, *, ping_interval: float = 5.0) -> None:
        self._url = url
        self._ping_interval = ping_interval
        self._conn: asyncpg.Connection | None = None
        self._task_waiters: dict[str, set[asyncio.Future[object]]] = defaultdict(set)
        self._own_pids: set[int] = set()  # backend pids of this process's pool connections
        self._work = asyncio.Event()
        self._lost = asyncio.Event()
        self._connected = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def backend_pid(self) -> int | None:
        """The PostgreSQL backend serving the LISTEN connection (for tests and ops)."""
        return self._conn.get_server_pid() if self._conn is not None else None

    async def start(self, *, wait: float = 10.0) -> None:
        self._runner = asyncio.create_task(self._run(), name="listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), wait)

    async def stop(self) -> None:
        self._stopping = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        await self._close()
        self.wake_everyone()

    # -- waiting ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def watch_task(self, task_id: str) -> Iterator[asyncio.Future[object]]:
        """Register interest in a task *before* reading its state; the future resolves when
        a notification names it (or the listener reconnects). Its result is what the waker
        already knew of the task (see announce_done), or None: read it. Always use as a
        context."""
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._task_waiters[task_id].add(fut)
        try:
            yield fut
        finally:
            waiters = self._task_waiters.get(task_id)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._task_waiters[task_id]

    def announce_work(self) -> None:
        """New work was stored by this process: wake its claimers without a round trip."""
        self._bump_work()

    def announce_done(self, task_ids: list[str], known: Mapping[str, object] = {}) -> list[str]:
        """Tasks this process just settled: wake their waiters without waiting for the
        NOTIFY (which still tells the other processes). A waiter gets the task's final
        state when `known` has it, else None and re-reads (a task that is not finished yet
        only costs a read). Returns the tasks that had a waiter here."""
        return [task_id for task_id in task_ids if self._wake(task_id, known.get(task_id))]

    def work_signal(self) -> asyncio.Event:
        """An event set by the next "new work" notification. Take it *before* claiming, so
        work announced between an empty claim and the wait is not missed."""
        return self._work

    # -- the connection --------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                await self._connect()
                backoff = 0.1
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._lost.wait(), self._ping_interval)
                    if self._lost.is_set():
                        raise ConnectionError("the LISTEN connection was terminated")
                    assert self._conn is not None
                    await self._conn.fetchval("SELECT 1", timeout=PING_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure means: reconnect
                if self._connected.is_set():
                    log.warning("listener lost its connection error=%r; reconnecting", exc)
                else:
                    log.warning("listener cannot connect error=%r; retry in %.1fs", exc, backoff)
                self._connected.clear()
                await self._close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self._url, timeout=10)
        await conn.add_listener(DONE_CHANNEL, self._on_done)
        await conn.add_listener(WORK_CHANNEL, self._on_work)
        conn.add_termination_listener(self._on_terminated)
        self._lost.clear()
        self._conn = conn
        self._connected.set()
        log.info("listener connected channels=%s,%s", DONE_CHANNEL, WORK_CHANNEL)
        # Anything sent while we were not listening is lost: everyone re-checks.
        self.wake_everyone()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
            if not conn.is_closed():
                conn.terminate()

    def _on_terminated(self, conn: Any) -> None:
        if self._conn is conn:
            self._lost.set()  # the ping loop reconnects at once, not at its next ping

    async def own_connection(self, conn: asyncpg.Connection) -> None:
        """Pool `init`: remember the backends of this process's own pool (see _on_done)."""
        self._own_pids.add(conn.get_server_pid())

    def _on_done(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if pid in self._own_pids:
            # Sent by this process's own completion, whose announce_done brings the tasks
            # in hand; the NOTIFY can overtake it. Wake later only in case it never comes.
            asyncio.get_running_loop().call_later(OWN_NOTIFY_GRACE, self._wake_all, payload)
            return
        self._wake_all(payload)

    def _wake_all(self, payload: str) -> None:
        for task_id in payload.split(","):
            self._wake(task_id, None)

    def _wake(self, task_id: str, known: object) -> bool:
        woke = False
        for fut in self._task_waiters.get(task_id, ()):
            if not fut.done():
                fut.set_result(known)
                woke = True
        return woke

    def _on_work(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._bump_work()

    def _bump_work(self) -> None:
        self._work.set()
        self._work = asyncio.Event()

    def wake_everyone(self) -> None:
        """Every waiter re-checks: after a reconnect (notifications were lost) or at shutdown."""
        for waiters in self._task_waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        self._bump_work()
