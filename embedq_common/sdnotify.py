"""Tell systemd how an embedq process is doing (sd_notify), without libsystemd.

Type=notify units learn READY/STOPPING/WATCHDOG from one datagram on $NOTIFY_SOCKET;
outside systemd (tests, docker, a shell) every call is a cheap no-op returning False.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

SEND_TIMEOUT = 1.0  # seconds; a stuck manager must not stall the event loop for long


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1") to systemd; False when not under systemd or on error."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):  # abstract namespace: the kernel wants a leading NUL
        addr = "\0" + addr[1:]
    elif not addr.startswith("/"):  # unset, or a form we don't speak (vsock:)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(addr)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify failed state=%s error=%s", state.split("=")[0], exc)
        return False
    return True


def ready() -> bool:
    """Startup is done (the port listens): systemd starts dependent units and the watchdog."""
    return notify("READY=1")


def stopping() -> bool:
    """Shutdown began: systemd shows 'deactivating' instead of blaming a crash."""
    return notify("STOPPING=1")


def watchdog() -> bool:
    """Prove liveness; missing pings for WatchdogSec makes systemd kill and restart us."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """One line shown by `systemctl status`."""
    return notify(f"STATUS={text}")


def watchdog_interval() -> float | None:
    """Seconds between pings (half of WatchdogSec), or None when no watchdog is asked of us."""
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):  # inherited by a child (e.g. embedded PostgreSQL)
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


async def watchdog_loop(is_healthy: Callable[[], Awaitable[bool]], interval: float) -> None:
    """Ping the watchdog every `interval` seconds, only while `is_healthy()` says True.

    A check that raises or outlasts `interval` counts as unhealthy, so a hung database
    lets the watchdog expire and systemd restarts the service. Runs until cancelled.
    """
    loop = asyncio.get_running_loop()
    healthy = True
    while True:
        started = loop.time()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow our own
            # cancellation when the check finishes at the same moment.
            async with asyncio.timeout(interval):
                now_healthy = await is_healthy()
        except Exception as exc:  # a failing or hung check means "not healthy"
            log.debug("watchdog check failed error=%r", exc)
            now_healthy = False
        if now_healthy != healthy:
            log.warning("watchdog healthy=%s", now_healthy)
            healthy = now_healthy
        if healthy:
            watchdog()
        # Tick on a fixed period: a slow check must not stretch the gap past WatchdogSec.
        await asyncio.sleep(max(0.0, interval - (loop.time() - started)))
