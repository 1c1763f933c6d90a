"""The load generator: N closed-loop clients, each on a keep-alive connection of its own,
in a process of its own so it never shares a GIL with what it measures.

Kept cheap on purpose, since it shares the machine's cores with what it measures: its HTTP
client is bench/http1.py (aiohttp's took three times the CPU), bodies are bytes formatted
from a pre-encoded template (no json.dumps per request), and a response is checked by status
and length only (vectors are never decoded). The same code calls the Ollama double directly
and embedq, so the two compare.

    python -m bench.load '{"url": ..., "kind": "embedq", "clients": 32, ...}'
    python -m bench.load < specs.jsonl        # one spec per line, one result each

prints `measuring` when the warm-up ends, `progress N` every `progress` seconds if asked,
`stopped` when the window closes, then `result {json}`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

from .http1 import Connection, ProtocolError

FILLER = b"the quick brown fox jumps over the lazy dog"  # ~60-character texts
B64_PER_FLOAT = 4 / 3  # base64 characters per float32 byte
DRAIN_LIMIT = 30.0  # seconds in-flight requests get to finish after the window
MAX_SPECS = 1000  # scenarios one load process runs, at most


@dataclass
class Spec:
    url: str  # full URL to POST to
    kind: str = "embedq"  # "embedq" (base64 answer, as the SDK asks) or "ollama" (/api/embed)
    model: str = "nomic-embed-text"
    clients: int = 1
    texts: int = 1  # per request
    duration: float = 5.0  # seconds measured, after the warm-up
    warmup: float = 1.0  # seconds
    prefix: str = "bench"  # texts are "<prefix> <n> ...": a new prefix means new texts
    total: int = 0  # > 0: send exactly this many requests (no warm-up), then stop
    dim: int = 768  # for the length check
    token: str = ""
    progress: float = 0.0  # seconds between `progress N` lines (0: none)
    timeout: float = 60.0  # seconds per request

    @classmethod
    def from_json(cls, raw: str) -> Spec:
        data = json.loads(raw)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def body_maker(spec: Spec) -> Callable[[int], bytes]:
    """Request k's body: texts k*T .. k*T+T-1, as bytes from a pre-encoded template."""
    head = b'{"model":' + json.dumps(spec.model).encode() + b',"input":'
    tail = b',"encoding_format":"base64"}' if spec.kind == "embedq" else b"}"
    prefix = spec.prefix.encode()
    per = spec.texts

    def make(k: int) -> bytes:
        if per == 1:
            return head + b'"%b %d %b"' % (prefix, k, FILLER) + tail
        texts = b",".join(b'"%b %d %b"' % (prefix, k * per + j, FILLER) for j in range(per))
        return head + b"[" + texts + b"]" + tail

    return make


def min_length(spec: Spec) -> int:
    """Fewest bytes a full answer can have: base64 vectors, or JSON floats of >= 2 chars."""
    if spec.kind == "embedq":
        return spec.texts * math.ceil(spec.dim * 4 * B64_PER_FLOAT)
    return spec.texts * spec.dim * 2


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def summary(
    latencies: list[float], errors: Counter[str], seconds: float, per: int
) -> dict[str, Any]:
    lat = sorted(latencies)
    n = len(lat)
    return {
        "requests": n,
        "texts": n * per,
        "errors": sum(errors.values()),
        "statuses": dict(errors),
        "seconds": round(seconds, 3),
        "rps": round(n / seconds, 1) if seconds > 0 else 0.0,
        "tps": round(n * per / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": round(percentile(lat, 0.50) * 1000, 2),
        "p90_ms": round(percentile(lat, 0.90) * 1000, 2),
        "p99_ms": round(percentile(lat, 0.99) * 1000, 2),
        "max_ms": round(lat[-1] * 1000, 2) if lat else math.nan,
        "mean_ms": round(sum(lat) / n * 1000, 2) if n else math.nan,
    }


async def run(spec: Spec, say: Callable[[str], None] = print) -> dict[str, Any]:
    make = body_maker(spec)
    need = min_length(spec)
    headers = {"Content-Type": "application/json"}
    if spec.token:
        headers["Authorization"] = f"Bearer {spec.token}"
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    counter: Iterator[int] = iter(range(spec.total)) if spec.total else itertools.count()
    clock = time.perf_counter
    started = clock()
    measure_from = started if spec.total else started + spec.warmup
    stop_at = math.inf if spec.total else measure_from + spec.duration
    done = 0
    first_start = last_end = started

    async def client() -> None:
        conn = Connection(spec.url, headers)
        try:
            await requests_on(conn)
        finally:
            conn.close()

    async def requests_on(conn: Connection) -> None:
        nonlocal done, last_end
        while clock() < stop_at:
            k = next(counter, None)
            if k is None:
                return
            body = make(k)
            t0 = clock()
            try:
                async with asyncio.timeout(spec.timeout):
                    code, length = await conn.post(body)
                status = str(code) if code != 200 else ""
                if not status and length < need:
                    status = "short"
            except (ProtocolError, TimeoutError, OSError) as exc:
                status = type(exc).__name__
            t1 = clock()
            if measure_from <= t1 <= stop_at:
                if status:
                    errors[status] += 1
                else:
                    latencies.append(t1 - t0)
                    done += 1
                    last_end = t1

    async def narrate() -> None:
        """Tell the parent when the window opens and closes, for its CPU snapshots."""
        if spec.total:
            return
        await asyncio.sleep(max(0.0, measure_from - clock()))
        say("measuring")
        while (left := stop_at - clock()) > 0:
            await asyncio.sleep(min(spec.progress or left, left))
            if spec.progress and clock() < stop_at:
                say(f"progress {done}")
        say("stopped")

    narrator = asyncio.create_task(narrate(), name="narrate")
    clients = [asyncio.create_task(client()) for _ in range(spec.clients)]
    window = asyncio.gather(*clients)
    limit = (spec.warmup + spec.duration if not spec.total else 3600.0) + DRAIN_LIMIT
    try:
        await asyncio.wait_for(asyncio.shield(window), limit)
    except TimeoutError:
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        errors["unfinished"] += 1
    await asyncio.gather(narrator, return_exceptions=True)
    seconds = (last_end - first_start) if spec.total else spec.duration
    return summary(latencies, errors, seconds, spec.texts) | {"spec": asdict(spec)}


def main(argv: list[str] | None = None) -> None:
    """One spec as the argument; or, with none, one spec per line of stdin (a run reuses one
    process for all its scenarios) until EOF or MAX_SPECS."""
    args = sys.argv[1:] if argv is None else argv
    say = lambda line: print(line, flush=True)  # noqa: E731
    lines = args[:1] if args else itertools.islice(sys.stdin, MAX_SPECS)
    for line in lines:
        if line.strip():
            result = asyncio.run(run(Spec.from_json(line), say))
            say("result " + json.dumps(result))


if __name__ == "__main__":
    main()
