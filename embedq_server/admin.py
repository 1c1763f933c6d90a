"""embedq-server status|requeue|purge|tokens: the operator's commands, run against the same
database as `serve` (DATABASE_URL, or the embedded one under EMBEDQ_DATA_DIR).

requeue and purge call SQL functions from migration 0004, the same ones docs/ops.md shows
for psql, so both paths keep the tasks' counters right. These commands never migrate: a
status check must not change a production schema behind the operator's back.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import uuid
from collections.abc import Sequence
from typing import Any, TextIO

import asyncpg

from .sql import QUERIES

COMMANDS = ("status", "requeue", "purge", "tokens")
CONNECT_TIMEOUT = 10.0  # seconds

EXIT_OK = 0
EXIT_NOTHING_DONE = 1  # purge without --yes: it only said what it would do
EXIT_ERROR = 2  # bad arguments, unreachable or unmigrated database


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the admin commands (no environment twins: they pick what to act on)."""
    group = parser.add_argument_group("status, requeue, purge")
    group.add_argument("--model", help="requeue/purge: only this model (purge requires it)")
    group.add_argument(
        "--older-than",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="requeue: only inputs that failed at least this many seconds ago",
    )
    group.add_argument("--task", help="requeue: only this task id")
    group.add_argument(
        "--yes", action="store_true", help="purge: really delete (without it: a dry run)"
    )


def run(command: str, args: argparse.Namespace, url: str | None, out: TextIO | None = None) -> int:
    """Run one admin command; return the process exit code. Output goes to `out` (stdout)."""
    out = out if out is not None else sys.stdout
    if command == "tokens":
        return tokens(out)
    if url is None:
        raise ValueError("the database commands need a database URL")
    try:
        return asyncio.run(_run_db(command, args, url, out))
    except asyncpg.UndefinedTableError as exc:
        print(
            f"embedq-server {command}: the schema is not there ({exc}); "
            "run `embedq-server migrate` first",
            file=sys.stderr,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        print(f"embedq-server {command}: database error: {exc}", file=sys.stderr)
    return EXIT_ERROR


async def _run_db(command: str, args: argparse.Namespace, url: str, out: TextIO) -> int:
    conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    try:
        if command == "status":
            return await status(conn, out)
        if command == "requeue":
            return await requeue(
                conn, out, model=args.model, older_than=args.older_than, task=args.task
            )
        if command == "purge":
            return await purge(conn, out, model=args.model, yes=args.yes)
        raise ValueError(f"unknown admin command {command!r}")
    finally:
        await conn.close()


# -- status ------------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        bool(rows) and all(isinstance(r[i], int | float) for r in rows) for i in range(len(headers))
    ]
    lines = []
    for row in cells:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        lines.append("  " + "  ".join(parts).rstrip())
    return "\n".join(lines)


async def status(conn: asyncpg.Connection, out: TextIO) -> int:
    """The queue per model and state, and the workers, at a glance."""
    queue = await conn.fetch(QUERIES["ops_queue"])
    workers = await conn.fetch(QUERIES["ops_workers"])
    print("queue (inputs per model and state)", file=out)
    if queue:
        rows = [
            (r["model"], r["state"], r["items"], r["tasks"], _age(r["oldest_pending_seconds"]))
            for r in queue
        ]
        print(table(("model", "state", "inputs", "tasks", "oldest pending"), rows), file=out)
    else:
        print("  empty", file=out)
    alive = sum(1 for w in workers if w["alive"])
    print(f"\nworkers ({alive} alive of {len(workers)} registered)", file=out)
    if workers:
        worker_rows = [
            (
                w["name"],
                "yes" if w["alive"] else "no",
                ",".join(w["models"]),
                w["backend"] or "-",
                w["version"] or "-",
                w["items_in_hand"],
                _age(w["seconds_since_seen"]) + " ago",
            )
            for w in workers
        ]
        headers = ("name", "alive", "models", "backend", "version", "in hand", "last seen")
        print(table(headers, worker_rows), file=out)
    else:
        print("  none has called in yet", file=out)
    return EXIT_OK


# -- requeue and purge -------------------------------------------------------------------


async def requeue(
    conn: asyncpg.Connection,
    out: TextIO,
    *,
    model: str | None = None,
    older_than: float = 0.0,
    task: str | None = None,
) -> int:
    """Failed inputs back to pending with fresh attempts; their tasks become unfinished
    again. Nothing to requeue is not an error (exit 0), so it can run from a timer."""
    if older_than < 0:
        print("embedq-server requeue: --older-than must be >= 0", file=sys.stderr)
        return EXIT_ERROR
    task_id = None
    if task is not None:
        try:
            task_id = uuid.UUID(task)
        except ValueError:
            print(f"embedq-server requeue: --task {task!r} is not a task id", file=sys.stderr)
            return EXIT_ERROR
    row = await conn.fetchrow(QUERIES["ops_requeue_failed"], model, older_than, task_id)
    items, tasks = row["items"], row["tasks"]
    scope = f" of model {model}" if model else ""
    if items == 0:
        print(f"nothing to requeue: no failed inputs{scope} match", file=out)
    else:
        print(f"requeued {items} failed input(s){scope} in {tasks} task(s)", file=out)
    return EXIT_OK


async def purge(conn: asyncpg.Connection, out: TextIO, *, model: str | None, yes: bool) -> int:
    """Drop a model's pending inputs. Tasks that had not started are deleted; the pending
    inputs of partly done tasks end failed ('purged'), so their clients get an answer."""
    if not model:
        print("embedq-server purge: --model is required", file=sys.stderr)
        return EXIT_ERROR
    preview = await conn.fetchrow(QUERIES["ops_purge_preview"], model)
    if not yes:
        print(
            f"would purge {preview['items']} pending input(s) of model {model} in "
            f"{preview['tasks']} task(s); run again with --yes to do it",
            file=out,
        )
        return EXIT_NOTHING_DONE
    row = await conn.fetchrow(QUERIES["ops_purge_pending"], model)
    print(
        f"purged model {model}: deleted {row['deleted_tasks']} task(s) with "
        f"{row['deleted_items']} input(s) that had not started; failed "
        f"{row['failed_items']} pending input(s) of partly done tasks (error_code purged)",
        file=out,
    )
    return EXIT_OK


# -- tokens ------------------------------------------------------------------------------


def tokens(out: TextIO) -> int:
    """Tokens live in the environment, not the database: suggest fresh ones."""
    client, worker = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    print(
        "embedq keeps no tokens in its database: the server reads them from its environment\n"
        "(AUTH_TOKEN for clients, WORKER_TOKEN for workers; comma-separated lists, so a\n"
        "token can be rotated by adding the new one, moving callers over, then removing\n"
        "the old one; restart the server after each change).\n"
        "\nFreshly generated suggestions:\n"
        f"  AUTH_TOKEN={client}\n"
        f"  WORKER_TOKEN={worker}",
        file=out,
    )
    return EXIT_OK
