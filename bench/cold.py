"""What one idle request's steps cost on this machine, back to back and after a pause.

An idle request crosses more processes through embedq than when it calls the backend
directly: the client, the server, PostgreSQL (the insert), the worker, the backend and
back. Each step wakes a process that was asleep, on CPUs that were idle, and runs its code
from cold caches. This measures two of those steps, one after the other (hot) and with
the pause of an idle request between them (~12 ms, the GPU-like double's call):

- the server's submit statement (one request, one input, handed to a waiting claim),
  and `SELECT 1`, on one connection to a fresh bench database;
- an HTTP round trip to the bare aiohttp endpoint of `bench/floor.py`.

    python -m bench.cold                 # about 30 s; DATABASE_URL is honoured

It prints the medians and their ratio; bench/HISTORY.md quotes one run (seventh round).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
import asyncpg

from embedq_server.records import fingerprint
from embedq_server.sql import QUERIES

from .procs import spawn, wait_listening
from .stack import bench_database, postgres_server

PAUSE = 0.012  # seconds: about one idle request through the GPU-like double
ROUNDS = 300  # steps timed per figure (the first WARMUP of them not counted)
WARMUP = 30


async def timed(step: Callable[[], Awaitable[object]], pause: float, rounds: int) -> float:
    """The median milliseconds of `step`, run `rounds` times with `pause` between."""
    times: list[float] = []
    for _ in range(rounds):
        started = time.perf_counter()
        await step()
        times.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(pause)
    return statistics.median(times[WARMUP:])


async def measure(db_url: str, floor_url: str, rounds: int) -> list[tuple[str, float, float]]:
    conn = await asyncpg.connect(db_url)

    async def submit() -> object:
        task_id, text = uuid.uuid4(), f"cold {uuid.uuid4().hex}"
        return await conn.fetch(
            QUERIES["submit_tasks"],
            [task_id], ["bench"], [fingerprint("bench", "m", 0, [text])], ["m"], [0], [1],
            ["bench"], [task_id], [0], [text], [uuid.uuid4()], ["bench-worker"], 60.0,
            [False], [None],
        )  # fmt: skip

    async def select_one() -> object:
        return await conn.fetchval("SELECT 1")

    body = b'{"model": "m", "input": "cold", "encoding_format": "base64"}'
    async with aiohttp.ClientSession() as session:

        async def http() -> object:
            async with session.post(f"{floor_url}/v1/embeddings", data=body) as resp:
                return await resp.read()

        rows = []
        for name, step in (
            ("submit statement (1 input)", submit),
            ("SELECT 1", select_one),
            ("HTTP round trip (bench/floor.py)", http),
        ):
            hot = await timed(step, 0.0, rounds)
            cold = await timed(step, PAUSE, rounds)
            rows.append((name, hot, cold))
    await conn.close()
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args(argv)
    with postgres_server() as pg_url, bench_database(pg_url) as db_url:
        floor = spawn("floor", "bench.floor", ["--port", "0"])
        try:
            floor_url = wait_listening(floor)
            rows = asyncio.run(measure(db_url, floor_url, args.rounds))
        finally:
            floor.stop()
            floor.log_path.unlink(missing_ok=True)
    print(f"{'step':<34} {'back to back':>13} {f'after {PAUSE * 1000:.0f} ms':>13} {'ratio':>6}")
    for name, hot, cold in rows:
        print(f"{name:<34} {hot:>10.3f} ms {cold:>10.3f} ms {cold / hot:>5.1f}x")


if __name__ == "__main__":
    main()
