"""`python -m bench.run`: embedq's benchmark in one run (`make bench`).

Starts PostgreSQL (embedded, or DATABASE_URL's server), the server, the GPU-like Ollama
double and workers, then measures, with one load generator process: the double called
directly against the same load through embedq (idle latency, 32 and 256 clients, 100-text
requests), repeated texts, 50 ms of round trip between worker and server, the zero-cost
backend (the queue's own ceiling) and a soak for memory. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from . import report
from .load import Spec
from .measure import LoadProcess
from .procs import REPO_ROOT, CpuMeter, rss_kb
from .scenarios import (
    FLOOR,
    GPU,
    IDEAL,
    RTT,
    SOAK_SCENARIO,
    ZERO,
    Scenario,
    against_ideal,
    ceiling,
    judge,
)
from .stack import (
    CLIENT_TOKEN,
    DIM,
    FIXED_MS,
    GPU_MODEL,
    NODB_MODES,
    PER_TEXT_MS,
    ZERO_MODEL,
    Stack,
    running_stack,
)

DEFAULT_JSON = REPO_ROOT / "bench" / "results.json"
DURATION = 6.0  # seconds measured per scenario
WARMUP = 1.0  # seconds before each measurement
SOAK = 30.0  # seconds of the default soak (`--soak 180` for a verdict past the warm-up)
SOAK_SAMPLE = 2.0  # seconds between RSS samples
RTT_MS = 50.0  # worker <-> server round trip in the RTT scenarios
REPEAT_TEXTS = 500  # texts sent twice in the repeated-texts scenario (a multiple of 100)
REPEAT_CLIENTS = 32
ORPHAN_WAIT = 2.0  # seconds to see a stopped worker's claim take the throwaway input


def worker_batch_size() -> int:
    """BATCH_SIZE as the worker will read it (the environment, or its default)."""
    from embedq_worker.settings import WorkerSettings

    return WorkerSettings.from_env().batch_size


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    code = ("embedq_server", "embedq_worker", "migrations")
    dirty = [line[3:] for line in git("status", "--porcelain", "--", *code).splitlines()]
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg()[0],
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": dirty,
    }


def _http(url: str, body: dict[str, Any] | None = None, token: str = "") -> dict[str, Any]:
    """One small JSON call (POST with a body, else GET), outside any measurement."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def _double(stack: Stack, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    assert stack.double is not None
    return _http(stack.double.url + path, body)


def _claims(stack: Stack, model: str) -> tuple[float, float]:
    """The server's count of non-empty claims of a model and of the inputs they took (its
    /metrics histogram embedq_batch_size): what the zero-cost worker's batches were."""
    assert stack.server is not None
    with urllib.request.urlopen(stack.server.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = {"embedq_batch_size_count": 0.0, "embedq_batch_size_sum": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in found and sample.labels.get("model") == model:
                found[sample.name] = sample.value
    return found["embedq_batch_size_count"], found["embedq_batch_size_sum"]


class Bench:
    def __init__(self, stack: Stack, args: argparse.Namespace, batch: int) -> None:
        self.stack = stack
        self.args = args
        self.batch = batch
        self.run_id = uuid.uuid4().hex[:8]
        self.load = LoadProcess()
        self.results: dict[str, Any] = {}
        self.orphaned: list[str] = []  # stopped workers whose claim took an input for nobody

    def meter(self) -> CpuMeter:
        s = self.stack
        groups = {
            "server": [c.pid for c in (s.server, s.floor, s.ideal) if c is not None],
            "worker": [c.pid for c in (*s.workers.values(), s.puller) if c is not None],
            "double": [s.double.pid] if s.double else [],
            "load": [self.load.pid],
            "proxy": [s.proxy.pid] if s.proxy else [],
        }
        return CpuMeter(groups, postgres_marker=s.postgres_marker)

    def spec(self, sc: Scenario, **over: Any) -> Spec:
        assert self.stack.server is not None and self.stack.double is not None
        base = self.stack.server.url + "/v1/embeddings"
        if sc.via == "floor":
            assert self.stack.floor is not None
            base = self.stack.floor.url + "/v1/embeddings"
        elif sc.via in ("greedy", "oracle", "pull", "pull-greedy", *NODB_MODES):
            assert self.stack.ideal is not None
            base = self.stack.ideal.url + "/v1/embeddings"
        values: dict[str, Any] = {
            "url": self.stack.double.url + "/api/embed" if sc.via == "direct" else base,
            "kind": "ollama" if sc.via == "direct" else "embedq",
            "model": ZERO_MODEL if sc.via == "zero" else GPU_MODEL,
            "clients": sc.clients,
            "texts": sc.texts,
            "duration": self.args.duration,
            "warmup": self.args.warmup,
            "prefix": f"{sc.name}-{self.run_id}",
            "dim": DIM,
            "token": CLIENT_TOKEN,
        }
        values.update(over)
        return Spec(**values)

    def scenario(self, sc: Scenario) -> dict[str, Any]:
        gpu = sc.via not in ("zero", "floor")
        if gpu:
            _double(self.stack, "/_control", {"reset_stats": True})
        elif sc.via == "zero":
            claims_before = _claims(self.stack, ZERO_MODEL)
        result, cpu = self.load.run(self.spec(sc), self.meter())
        result.pop("spec", None)
        n = sc.ceiling_n(self.batch)
        entry: dict[str, Any] = {
            "via": sc.via,
            "clients": sc.clients,
            "texts_per_request": sc.texts,
            **result,
            "ceiling_n": n,
            "ceiling": round(ceiling(n), 1) if n else None,
            "ceiling_pct": round(100 * result["tps"] / ceiling(n), 1) if n else None,
            "cpu": cpu,
            # CPU per request barely moves with other people's load, unlike throughput.
            "cpu_ms_per_request": {
                name: round(10 * pct / result["rps"], 3) if result["rps"] else None
                for name, pct in cpu.items()
                if name in ("server", "worker", "postgres", "double", "load")
            },
            "loadavg": round(os.getloadavg()[0], 2),
        }
        probe = self.results.get(f"cap{n}-direct")
        if n and probe and probe["tps"] and sc.via != "direct":
            entry["capacity_pct"] = round(100 * result["tps"] / probe["tps"], 1)
        if gpu:
            stats = _double(self.stack, "/_stats")
            sizes = stats.get("batch_sizes") or []
            entry["mean_batch"] = round(sum(sizes) / len(sizes), 1) if sizes else None
            entry["double_calls"] = stats.get("calls")
        elif sc.via == "zero":
            claims_after = _claims(self.stack, ZERO_MODEL)
            claims = claims_after[0] - claims_before[0]
            taken = claims_after[1] - claims_before[1]
            entry["worker_batch_size"] = sc.batch
            entry["mean_batch"] = round(taken / claims, 1) if claims else None
        self.results[sc.name] = entry
        print(
            f"  {sc.name:<12} {entry['tps']:>9,.1f} texts/s  p50 {entry['p50_ms']:.1f} ms  "
            f"p99 {entry['p99_ms']:.1f} ms  errors {entry['errors']}"
            + (f"  {entry['ceiling_pct']:.0f}% of ceiling({n})" if n else ""),
            flush=True,
        )
        return entry

    def retire_worker(self, name: str, model: str) -> None:
        """Stop a worker, then feed its orphaned claim one throwaway input.

        A stopped worker leaves its long-poll claim waiting in the server, which claims the
        next input of its model for nobody (it stays processing until the lease expires,
        60 s); without this, the next scenario's first requests would wait for that.
        """
        assert self.stack.server is not None
        self.stack.stop_worker(name)
        body = {"model": model, "input": f"orphan-{name}-{uuid.uuid4().hex}", "wait_seconds": 0}
        task = _http(self.stack.server.url + "/v1/embeddings", body, CLIENT_TOKEN)["id"]
        deadline = time.monotonic() + ORPHAN_WAIT
        while time.monotonic() < deadline:
            status = _http(f"{self.stack.server.url}/tasks/{task}", None, CLIENT_TOKEN)["status"]
            if status != "pending":
                self.orphaned.append(name)
                return
            time.sleep(0.05)

    def repeat(self) -> dict[str, Any]:
        """Send a set of texts, then the same again (single texts, then 100-text requests):
        how many the worker computes again, and how much faster the second pass is."""
        total = 100 if self.args.quick else REPEAT_TEXTS
        prefix = f"repeat-{self.run_id}"
        passes: dict[str, Any] = {}
        plan = [
            ("first", 1, REPEAT_CLIENTS),
            ("again", 1, REPEAT_CLIENTS),
            ("again as 100-text requests", 100, total // 100),
        ]
        for name, per, clients in plan:
            sc = Scenario(name, "embedq", clients, per)
            _double(self.stack, "/_control", {"reset_stats": True})
            spec = self.spec(sc, prefix=prefix, total=total // per, warmup=0.0, duration=0.0)
            result, _cpu = self.load.run(spec, self.meter())
            computed = int(_double(self.stack, "/_stats")["texts"])
            passes[name] = {
                "seconds": result["seconds"],
                "errors": result["errors"],
                "computed": computed,
                "hit_rate_pct": round(100 * (1 - computed / total), 1),
            }
        return {"texts": total, "clients": REPEAT_CLIENTS, "passes": passes}

    def soak(self, seconds: float) -> dict[str, Any]:
        """Zero-cost single-text load for `seconds`; RSS of the server and worker sampled at
        every progress line, growth fitted per request over the second half (the first is
        warm-up: allocator arenas and caches fill for the first ~30,000 requests)."""
        assert self.stack.server is not None
        pids = {"server": self.stack.server.pid, "worker": self.stack.workers["zero"].pid}
        points: list[tuple[int, dict[str, int]]] = []

        def sample(count: int) -> None:
            points.append((count, {name: rss_kb(pid) for name, pid in pids.items()}))

        every = min(SOAK_SAMPLE, max(seconds / 6, 0.25))
        spec = self.spec(
            SOAK_SCENARIO, duration=seconds, progress=every, prefix=f"soak-{self.run_id}"
        )
        result, cpu = self.load.run(spec, self.meter(), on_progress=sample)
        steady = points[len(points) // 2 :]
        growth = {name: _slope_per_1000(steady, name) for name in pids}
        return {
            "seconds": seconds,
            "requests": result["requests"],
            "rps": result["rps"],
            "errors": result["errors"],
            "samples": len(points),
            "rss_kib": {name: [p[1][name] for p in points] for name in pids},
            "requests_at_sample": [p[0] for p in points],
            "kib_per_1000_requests": growth,
            "cpu": cpu,
        }

    def wanted(self, name: str, quick_ok: bool = True, *, named: bool = False) -> bool:
        """Is this scenario (or "repeat", "soak") part of this run? `named`: only when
        --only names it."""
        if self.args.only:
            return name in self.args.only
        return not named and (quick_ok or not self.args.quick)

    def run(self) -> dict[str, Any]:
        stack = self.stack
        repeat: dict[str, Any] | None = None
        soak: dict[str, Any] | None = None
        try:
            if self.wanted(FLOOR.name):
                print("bare aiohttp server (the floor of this machine):", flush=True)
                stack.start_floor()
                self.scenario(FLOOR)
                stack.stop_floor()

            ideal = [sc for sc in IDEAL if self.wanted(sc.name, sc.quick, named=sc.named)]
            if ideal:
                print("a batcher with nothing in its way (bench/ideal.py):", flush=True)
            for sc in ideal:
                stack.start_ideal(sc.via)
                self.scenario(sc)
                stack.stop_ideal()

            gpu = [sc for sc in GPU if self.wanted(sc.name, sc.quick)]
            if gpu or self.wanted("repeat"):
                print("GPU-like double, one worker on loopback:", flush=True)
                stack.start_worker("gpu")
                for sc in gpu:
                    self.scenario(sc)
                if self.wanted("repeat"):
                    repeat = self.repeat()
                    print(report.repeat_lines(repeat), flush=True)
                self.retire_worker("gpu", GPU_MODEL)

            rtt = [sc for sc in RTT if self.wanted(sc.name, sc.quick)]
            if rtt:
                print(
                    f"GPU-like double, the worker {RTT_MS:.0f} ms of round trip away:", flush=True
                )
                proxy = stack.start_proxy(RTT_MS / 2)
                stack.start_worker("rtt", server_url=proxy.url)
                for sc in rtt:
                    self.scenario(sc)
                self.retire_worker("rtt", GPU_MODEL)
                stack.stop_proxy()

            zero = [sc for sc in ZERO if self.wanted(sc.name, sc.quick)]
            do_soak = self.args.soak > 0 and self.wanted("soak")
            batches = {sc.batch for sc in zero} | ({SOAK_SCENARIO.batch} if do_soak else set())
            if batches:
                print("zero-cost backend:", flush=True)
            for batch in sorted(batches, reverse=True):
                stack.start_worker(
                    "zero", EMBEDDING_MODEL=f"zero:{ZERO_MODEL}", BATCH_SIZE=str(batch)
                )
                for sc in zero:
                    if sc.batch == batch:
                        self.scenario(sc)
                if do_soak and batch == SOAK_SCENARIO.batch:
                    soak = self.soak(self.args.soak)
                    print(report.soak_lines(soak), flush=True)
                self.retire_worker("zero", ZERO_MODEL)
        finally:
            self.load.close()
        return {
            "scenarios": self.results,
            "repeat": repeat,
            "soak": soak,
            "orphaned_claims": self.orphaned,
        }


def _slope_per_1000(points: list[tuple[int, dict[str, int]]], name: str) -> float | None:
    """Least-squares KiB per 1,000 requests of one process's RSS."""
    xs = [float(p[0]) for p in points]
    ys = [float(p[1][name]) for p in points]
    if len(xs) < 3 or max(xs) == min(xs):
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    return round(slope * 1000, 2)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer, shorter scenarios")
    parser.add_argument("--duration", type=float, help=f"seconds per scenario [{DURATION:g}]")
    parser.add_argument("--warmup", type=float, help=f"seconds of warm-up [{WARMUP:g}]")
    parser.add_argument("--soak", type=float, help=f"seconds of soak, 0: none [{SOAK:g}]")
    parser.add_argument(
        "--only",
        type=lambda v: {n.strip() for n in v.split(",") if n.strip()},
        default=set(),
        metavar="NAMES",
        help="run only these scenarios (comma-separated names from the table, or repeat, soak)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a PostgreSQL setting for the bench database (ALTER DATABASE), e.g. "
        "synchronous_commit=off; repeatable",
    )
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 2.0 if args.quick else DURATION
    if args.warmup is None:
        args.warmup = min(WARMUP, args.duration / 3) if args.quick else WARMUP
    if args.soak is None:
        args.soak = args.duration if args.quick else SOAK
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    pg_settings = dict(s.split("=", 1) for s in args.pg_setting)
    batch = worker_batch_size()
    results: dict[str, Any] = {
        "machine": machine(),
        "config": {
            "quick": args.quick,
            "duration": args.duration,
            "warmup": args.warmup,
            "soak": args.soak,
            "batch_size": batch,
            "double": {"dim": DIM, "fixed_ms": FIXED_MS, "per_text_ms": PER_TEXT_MS},
            "rtt_ms": RTT_MS,
            "pg_settings": pg_settings,
            "database": "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded",
        },
    }
    print(
        f"embedq bench: {results['machine']['nproc']} cores, {results['machine']['cpu']}, "
        f"Python {results['machine']['python']}, batch size {batch}, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with running_stack(pg_settings) as stack:
        results |= Bench(stack, args, batch).run()
    results["targets"] = judge(results)
    results["against_ideal"] = against_ideal(results)
    results["machine"]["loadavg_end"] = os.getloadavg()[0]
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    print()
    print(report.scenario_table(results["scenarios"]))
    print()
    print(report.repeat_lines(results["repeat"]))
    print(report.soak_lines(results["soak"]))
    print()
    print(report.target_table(results["targets"]))
    print(report.ideal_line(results["against_ideal"], results["scenarios"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten {args.json} in {results['elapsed_seconds']:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
