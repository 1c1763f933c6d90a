"""embedq-server [serve|migrate|status|requeue|purge|tokens]: run the queue server, apply
migrations, or run an operator's command (admin.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator, Sequence

from aiohttp import web

from embedq_common import sdnotify

from . import __version__, admin
from .app import create_app
from .database import apply_migrations, embedded_postgres
from .logs import setup_logging
from .settings import Settings

log = logging.getLogger("embedq.server")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """The configured database, or an embedded one for the life of the block."""
    if settings.database_url is not None:
        yield settings.database_url
    else:
        with embedded_postgres(settings.data_dir) as url:
            yield url


async def serve(settings: Settings, url: str) -> None:
    app = create_app(settings, url)
    runner = web.AppRunner(app, shutdown_timeout=settings.shutdown_grace, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    log.info(
        "embedq-server %s listening on http://%s:%d database=%s model=%s tokens=%s",
        __version__,
        settings.host,
        settings.port,
        "embedded" if settings.embedded else "DATABASE_URL",
        settings.default_model,
        "configured" if settings.auth_tokens else "none (loopback only: open access)",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, _stop_once, stop)
    sdnotify.ready()
    try:
        await stop.wait()
        sdnotify.stopping()
        log.info("shutting down grace=%.0fs", settings.shutdown_grace)
    finally:
        await runner.cleanup()
        _ignore_stop_signals(loop)
        log.info("stopped")


def _stop_once(stop: asyncio.Event) -> None:
    if stop.is_set():
        log.info("already stopping: waiting for the requests in flight and the database")
    stop.set()


def _ignore_stop_signals(loop: asyncio.AbstractEventLoop) -> None:
    """From here on a repeated SIGTERM or SIGINT (a shell's trap after the terminal's
    Ctrl-C, an impatient operator) is ignored instead of killing the process: it would
    cut short the embedded PostgreSQL's stop and leave the database running with nobody
    to stop it. Blocked while the loop's handlers go, so none lands in between."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)  # restores the default action...
            signal.signal(sig, signal.SIG_IGN)  # ...which must not run
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedq-server",
        description="OpenAI-compatible embeddings queue server. Every option has an "
        "environment variable twin.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=["serve", "migrate", *admin.COMMANDS],
        help="serve (default): run the server; migrate: apply migrations and exit; "
        "status: the queue and workers at a glance; requeue: failed inputs back to pending; "
        "purge: drop a model's pending inputs; tokens: suggest fresh tokens",
    )
    admin.add_arguments(parser)
    Settings.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_args(args)
    except ValueError as exc:
        print(f"embedq-server: bad configuration: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_format, settings.log_level)
    if args.command == "serve":
        try:
            settings.check_safe_to_listen()
        except ValueError as exc:
            log.error("%s", exc)
            return 2
    if args.command == "tokens":
        return admin.run(args.command, args, None)
    with database_url(settings) as url:
        if args.command in admin.COMMANDS:
            return admin.run(args.command, args, url)
        apply_migrations(url)
        if args.command == "migrate":
            return 0
        asyncio.run(serve(settings, url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
