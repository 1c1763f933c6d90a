"""embedq-worker: claim batches from the embedq server and compute them with a backend."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from embedq_common import sdnotify
from embedq_common.logs import setup_logging

from . import __version__
from . import metrics as worker_metrics
from .backends import build_backends, parse_models
from .backends.base import Backend, BackendError
from .runner import Runner, run_until_signal
from .server_client import ServerClient
from .settings import WorkerSettings

log = logging.getLogger("embedq.worker")


async def start_backends(settings: WorkerSettings) -> dict[str, Backend]:
    specs = parse_models(settings.models, settings.backend)
    backends = build_backends(
        specs,
        ollama_urls=settings.ollama_urls,
        openai_base_url=settings.openai_base_url or None,
        openai_api_key=settings.openai_api_key or None,
        timeout=settings.request_timeout,
    )
    by_backend: dict[int, tuple[Backend, list[str]]] = {}
    for model, backend in backends.items():
        by_backend.setdefault(id(backend), (backend, []))[1].append(model)
    for backend, models in by_backend.values():
        info = await backend.start(models)
        log.info(
            "backend ready backend=%s endpoint=%s models=%s",
            info.name,
            info.endpoint,
            ",".join(f"{m}@{(r or '?')[:12]}" for m, r in info.models.items()) or ",".join(models),
        )
    return backends


async def amain(settings: WorkerSettings) -> int:
    try:
        metrics = worker_metrics.start(settings.metrics_port)  # None: METRICS_PORT=0
    except OSError as exc:
        log.error("cannot serve metrics port=%d error=%s", settings.metrics_port, exc)
        return 2
    try:
        backends = await start_backends(settings)
    except (BackendError, ValueError, ImportError) as exc:
        log.error("cannot start: %s", exc)
        if metrics is not None:
            metrics.stop()
        return 2
    kinds = sorted({b.name for b in backends.values()})
    log.info(
        "embedq-worker %s name=%s server=%s models=%s backends=%s batch=%d",
        __version__,
        settings.name,
        settings.server_url,
        ",".join(sorted(backends)),
        ",".join(kinds),
        settings.batch_size,
    )
    try:
        async with ServerClient(
            settings.server_url,
            settings.worker_token,
            name=settings.name,
            models=sorted(backends),
            backend=",".join(kinds),
            channel=settings.channel,
        ) as client:
            runner = Runner(
                settings, client, backends, on_batch=metrics.on_batch if metrics else None
            )
            if metrics is not None:
                metrics.watch(runner.stats)

            watchdog: asyncio.Task[None] | None = None

            async def started() -> None:
                nonlocal watchdog
                sdnotify.ready()
                interval = sdnotify.watchdog_interval()
                if interval is not None:
                    watchdog = asyncio.create_task(
                        sdnotify.watchdog_loop(runner.healthy, interval), name="watchdog"
                    )

            try:
                await run_until_signal(runner, started)
            finally:
                sdnotify.stopping()
                if watchdog is not None:
                    watchdog.cancel()
                    await asyncio.gather(watchdog, return_exceptions=True)
    finally:
        for backend in {id(b): b for b in backends.values()}.values():
            await backend.close()
        if metrics is not None:
            metrics.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedq-worker",
        description="Claim embedding work from an embedq server and compute it. Every option "
        "has an environment variable twin.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    WorkerSettings.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = WorkerSettings.from_args(args)
    except ValueError as exc:
        print(f"embedq-worker: bad configuration: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_format, settings.log_level)
    return asyncio.run(amain(settings))


if __name__ == "__main__":
    sys.exit(main())
