"""What a run measures and against what: the scenarios, the GPU-like double's ceilings, and
the targets of the "Fast" issue, each judged as a ratio within one run (so a slow or busy
machine moves both sides of a comparison alike)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .stack import FIXED_MS, PER_TEXT_MS

FLAT_KIB_PER_1000 = 50.0  # soak: RSS growth per 1,000 requests still called flat (~50 B each)
# The zero-cost worker's BATCH_SIZE: the server's MAX_BATCH. It has no GPU whose batch size to
# match, and the queue's own ceiling is reached with its biggest claims: each claim and each
# posted batch carries fixed work (two HTTP calls, two statements, a settle and a NOTIFY).
ZERO_BATCH = 256


def ceiling(n: int) -> float:
    """Texts/s the double can give with n texts in flight: it computes one call at a time,
    and a call of n texts costs FIXED_MS + PER_TEXT_MS * n."""
    return n * 1000.0 / (FIXED_MS + PER_TEXT_MS * n)


@dataclass(frozen=True)
class Scenario:
    name: str
    # "direct": the double; "embedq": GPU worker; "rtt": it, 50 ms away; "zero"; "floor";
    # "greedy" / "oracle": bench.ideal's batcher in that mode; "pull": bench.ideal_pull with
    # its timed puller ("pull-greedy": its greedy one); "nodb" ("behind",
    # "behind-probe"): bench.nodb's queue in that mode, and embedq's worker
    via: str
    clients: int
    texts: int = 1  # per request
    quick: bool = True  # part of --quick
    named: bool = False  # runs only when named in --only (a supplementary yardstick)
    batch: int = ZERO_BATCH  # zero-cost scenarios: the worker's BATCH_SIZE

    def ceiling_n(self, batch_size: int) -> int | None:
        """Texts in flight the ceiling is taken at: clients x texts, capped at the worker's
        batch size (embedq never sends a bigger call). Direct scenarios use the cap of their
        embedq twin, so the two read side by side; a capacity probe, its call size. None:
        no GPU (zero-cost)."""
        if self.via in ("zero", "floor"):
            return None
        if self.name.startswith("cap"):
            return self.texts
        return min(self.clients * self.texts, batch_size)


FLOOR = Scenario("floor", "floor", 64)  # bench.floor: the load generator + bare aiohttp
GPU = [
    Scenario("idle-direct", "direct", 1),
    Scenario("idle", "embedq", 1),
    # What the double really gives with 32 and 64 new texts per call, kept busy: % ceil is
    # only fair while these stay near the formula (they fell to ~60% before 93a47ac).
    Scenario("cap32-direct", "direct", 4, 32, quick=False),
    # ... and with 16: the call size 32 clients keep in flight while one call waits at the
    # double and the other's clients are on their way back (the c32 reading, below).
    Scenario("cap16-direct", "direct", 4, 16, quick=False),
    Scenario("c32-direct", "direct", 32),
    Scenario("c32", "embedq", 32),
    Scenario("cap64-direct", "direct", 4, 64, quick=False),
    Scenario("c256-direct", "direct", 256, quick=False),
    Scenario("c256", "embedq", 256),
    Scenario("t100-direct", "direct", 8, 100, quick=False),
    Scenario("t100", "embedq", 8, 100),
]
# The same clients through batchers with no database (bench/ideal.py, one HTTP hop; and
# bench/ideal_pull.py, embedq's hops through a puller timed as embedq's worker): what the
# idle and c32 targets ask of embedq, against what nothing-in-the-way reaches here.
IDEAL = [
    Scenario("idle-greedy", "greedy", 1, named=True),
    Scenario("idle-pull", "pull", 1),
    Scenario("c32-greedy", "greedy", 32, named=True),
    Scenario("c32-oracle", "oracle", 32),
    Scenario("c32-pull", "pull", 32, quick=False),
    Scenario("c32-pull-greedy", "pull-greedy", 32, named=True),
    # embedq's own server and worker with the queue in memory (bench/nodb.py): what a queue
    # that wrote nothing on the GPU's path would give with them.
    Scenario("idle-nodb", "nodb", 1, named=True),
    Scenario("c32-nodb", "nodb", 32, quick=False),
    # the same with PostgreSQL's writes done behind the GPU's path, none waited for, and
    # with a probe of the cache (one read per request) before a text goes to the worker
    Scenario("c32-behind", "behind", 32, named=True),
    Scenario("c32-behind-probe", "behind-probe", 32, named=True),
]
RTT = [
    Scenario("c256-rtt", "rtt", 256, quick=False),  # its drain alone takes seconds
    Scenario("c32-rtt", "rtt", 32),
]
ZERO = [
    Scenario("zero-1", "zero", 64),
    Scenario("zero-100", "zero", 16, 100),
    # The same at the GPU worker's default batch size, to show what the bigger claims buy.
    Scenario("zero-100-64", "zero", 16, 100, quick=False, batch=64),
]
SOAK_SCENARIO = Scenario("soak", "zero", 64)


@dataclass(frozen=True)
class Target:
    name: str
    unit: str
    limit: float
    at_least: bool  # True: measured >= limit passes; False: measured <= limit passes
    measure: Callable[[dict[str, Any]], float]


def _get(results: dict[str, Any], scenario: str, key: str) -> float:
    entry = results["scenarios"].get(scenario)
    return float(entry[key]) if entry and entry.get(key) is not None else math.nan


def _soak_growth(results: dict[str, Any]) -> float:
    growth = (results.get("soak") or {}).get("kib_per_1000_requests") or {}
    values = [v for v in growth.values() if v is not None]
    return max(values) if values else math.nan


TARGETS = [
    Target(
        "idle p50: embedq - direct", "ms", 3.0, False,
        lambda r: _get(r, "idle", "p50_ms") - _get(r, "idle-direct", "p50_ms"),
    ),
    Target("32 clients: share of ceiling(32)", "%", 75.0, True,
           lambda r: _get(r, "c32", "ceiling_pct")),
    Target("32 clients direct: share of ceiling(32)", "%", 15.0, False,
           lambda r: _get(r, "c32-direct", "ceiling_pct")),
    Target("256 clients: share of ceiling(batch)", "%", 75.0, True,
           lambda r: _get(r, "c256", "ceiling_pct")),
    Target("zero-cost single-text requests/s", "req/s", 2000.0, True,
           lambda r: _get(r, "zero-1", "rps")),
    Target("zero-cost texts/s in 100-text requests", "texts/s", 10000.0, True,
           lambda r: _get(r, "zero-100", "tps")),
    Target(
        "50 ms RTT, 256 clients: share of loopback", "%", 90.0, True,
        lambda r: 100 * _get(r, "c256-rtt", "tps") / _get(r, "c256", "tps"),
    ),
    Target("soak: RSS growth per 1,000 requests (worst)", "KiB", FLAT_KIB_PER_1000, False,
           _soak_growth),
]  # fmt: skip


def against_ideal(results: dict[str, Any]) -> dict[str, Any]:
    """embedq read against the batchers with nothing in their way (bench/ideal*.py): c32's
    texts/s as a share of each one's, and each idle p50 over the direct call's; and what
    the double itself gives when kept busy with 16-text calls, as a share of ceiling(32).
    Not targets: the yardstick for two of them."""
    shares: dict[str, float | None] = {}
    over: dict[str, float | None] = {}
    direct = _get(results, "idle-direct", "p50_ms")
    for sc in IDEAL:
        if sc.clients == 32:
            value = 100 * _get(results, "c32", "tps") / _get(results, sc.name, "tps")
            shares[sc.name] = None if math.isnan(value) else round(value, 1)
        else:
            value = _get(results, sc.name, "p50_ms") - direct
            over[sc.name] = None if math.isnan(value) else round(value, 2)
    cap16 = 100 * _get(results, "cap16-direct", "tps") / ceiling(32)
    return {
        "c32_share_pct": shares,
        "idle_over_direct_ms": over,
        "cap16_share_of_ceiling32_pct": None if math.isnan(cap16) else round(cap16, 1),
    }


def judge(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target with its measured value and whether it is met (None: not measured)."""
    out = []
    for t in TARGETS:
        value = t.measure(results)
        met = None if math.isnan(value) else (value >= t.limit if t.at_least else value <= t.limit)
        out.append(
            {
                "target": t.name,
                "limit": f"{'>=' if t.at_least else '<='} {t.limit:g} {t.unit}",
                "measured": None if math.isnan(value) else round(value, 2),
                "unit": t.unit,
                "met": met,
            }
        )
    return out
