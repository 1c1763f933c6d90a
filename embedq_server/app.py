"""create_app(settings, database_url): routes, middlewares and resources in cleanup_ctx."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from embedq_common import sdnotify

from . import channel, metrics, openai_api, openapi, status_page, tasks_api, worker_api
from .admission import Admission
from .auth import TokenSet
from .database import create_pool
from .errors import error_middleware
from .keys import (
    ADMISSION,
    CLIENT_TOKENS,
    DATABASE_URL,
    LISTENER,
    POOL,
    QUEUE,
    SETTINGS,
    WORKER_TOKENS,
)
from .listener import Listener
from .logs import request_log_middleware
from .queue import Queue
from .settings import LISTENER_PING, Settings

log = logging.getLogger("embedq.app")


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    listener = Listener(app[DATABASE_URL], ping_interval=LISTENER_PING)
    pool = await create_pool(
        app[DATABASE_URL],
        min_size=settings.pool_min,
        max_size=settings.pool_max,
        init=listener.own_connection,
    )
    await listener.start()
    app[POOL] = pool
    app[LISTENER] = listener
    app[QUEUE] = Queue(pool, listener, settings)
    try:
        yield
    finally:
        await listener.stop()
        await pool.close()


async def _maintenance_loop(app: web.Application) -> None:
    queue, interval = app[QUEUE], app[SETTINGS].maintenance_interval
    while True:
        try:
            await queue.maintain()
        except Exception as exc:  # the database may be restarting: try again next round
            log.warning("maintenance failed error=%r", exc)
        await asyncio.sleep(interval)


async def database_ok(app: web.Application) -> bool:
    try:
        await app[POOL].fetchval("SELECT 1", timeout=2)
    except Exception:
        return False
    return True


async def _background(app: web.Application) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(_maintenance_loop(app), name="maintenance")]
    interval = sdnotify.watchdog_interval()
    if interval is not None:
        # systemd restarts the server if it stops answering, or stays unhealthy too long.
        tasks.append(
            asyncio.create_task(
                sdnotify.watchdog_loop(lambda: database_ok(app), interval), name="watchdog"
            )
        )
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _on_shutdown(app: web.Application) -> None:
    """Stop waiting: in-flight requests answer now with their task ids, claims return empty."""
    app[QUEUE].close()


async def health(request: web.Request) -> web.Response:
    """Token-free and cheap: is the database answering? Reveals nothing private."""
    ok = await database_ok(request.app)
    listening = request.app[LISTENER].connected
    body = {
        "status": "ok" if ok else "unavailable",
        "database": "up" if ok else "down",
        "listener": "up" if listening else "down",
    }
    return web.json_response(body, status=200 if ok else 503)


def create_app(settings: Settings, database_url: str) -> web.Application:
    app = web.Application(
        middlewares=[request_log_middleware, error_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[DATABASE_URL] = database_url
    app[CLIENT_TOKENS] = TokenSet(settings.auth_tokens, open_access=settings.loopback)
    app[WORKER_TOKENS] = TokenSet(settings.worker_tokens, open_access=settings.loopback)
    app[ADMISSION] = Admission(settings.max_in_flight)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/health", health)
    metrics.setup(app)  # /metrics, /ready, and request counts (its middleware goes first)
    status_page.setup(app)
    openai_api.setup(app)
    openapi.setup(app)
    tasks_api.setup(app)
    worker_api.setup(app)
    channel.setup(app)  # the worker routes again, as messages on one WebSocket
    return app
