"""What each part of embedq's path costs the 32 clients, measured on a model of it.

The c32 target is a race: while one call computes, the clients of the call before it must
get their answers, send their next texts, and those texts must be claimed and reach the
double before it drains. bench/ideal_pull.py has embedq's hops and its worker's timing
but nothing durable; here it is made to pay, one part at a time, what embedq's
PostgreSQL statements and its heavier server add to that race (the delays are those
traced in embedq under this load, bench/README), so each part's price reads as points of
ceiling(32), side by side in one run. No database and no embedq process: a yardstick for
where the target is lost, not a measure of embedq itself.

    python -m bench.chain                  # every row twice, ~4-5 minutes
    python -m bench.chain --passes 1 --json chain.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .load import Spec
from .measure import LoadProcess
from .procs import CpuMeter
from .run import machine
from .scenarios import ceiling
from .stack import CLIENT_TOKEN, DIM, GPU_MODEL, Stack

CLIENTS = 32
DURATION = 8.0  # seconds measured per row and pass
WARMUP = 1.5
# Medians traced in embedq at 32 clients (bench/README): the group insert, the claim
# statement, the completion statement (ms), and its server's CPU per request over
# bench/ideal_pull.py's server's (0.35-0.48 against 0.12 ms at c32 in the full runs: 0.2
# is the low end of that difference).
INSERT_MS, CLAIM_MS, COMPLETE_MS, BUSY_MS = 2.0, 3.0, 4.5, 0.2


@dataclass(frozen=True)
class Row:
    name: str
    insert: float = 0.0
    claim: float = 0.0
    complete: float = 0.0
    busy: float = 0.0
    lead: float = 0.0  # the puller's --lead-ms (negative: later than embedq's worker)

    def server_args(self) -> list[str]:
        delays = f"{self.insert:g},{self.claim:g},{self.complete:g}"
        return ["--delays-ms", delays, "--busy-ms", f"{self.busy:g}"]


def rows(insert: float, claim: float, complete: float, busy: float) -> list[Row]:
    """From nothing in the way to everything embedq pays, one part at a time."""
    half = claim / 2
    return [
        Row("pull shape, timed as embedq's worker"),
        Row("  the same, claims aimed at the drain", lead=-3.0),
        Row(f"+ claim {half:g} ms", claim=half),
        Row(f"+ server CPU {busy:g} ms a request", busy=busy),
        Row(f"+ server CPU {1.5 * busy:g} ms a request", busy=1.5 * busy),
        Row(f"+ insert {insert:g} (to a claim already waiting)", insert),
        Row(f"+ insert {insert:g}, server CPU {busy / 2:g}", insert, busy=busy / 2),
        Row(f"+ insert {insert:g}, claim {half:g}", insert, half),
        Row(f"+ insert {insert:g}, claim {claim:g}", insert, claim),
        Row(f"+ insert {insert:g}, server CPU", insert, busy=busy),
        Row(f"+ insert {insert:g}, claim {half:g}, server CPU", insert, half, busy=busy),
        Row(f"+ insert {insert:g}, claim {claim:g}, server CPU", insert, claim, busy=busy),
        Row(f"+ answers after a completion of {complete:g}", insert, claim, complete),
        Row("+ all of it (embedq's path today)", insert, claim, complete, busy),
    ]


def measure(stack: Stack, load: LoadProcess, row: Row, duration: float, warmup: float) -> float:
    """One pass of one row: texts/s of 32 single-text clients as % of ceiling(32)."""
    stack.start_ideal("pull", row.server_args(), ["--lead-ms", f"{row.lead:g}"])
    try:
        assert stack.ideal is not None
        spec = Spec(
            url=stack.ideal.url + "/v1/embeddings",
            model=GPU_MODEL,
            clients=CLIENTS,
            duration=duration,
            warmup=warmup,
            prefix=f"chain-{time.monotonic_ns()}",
            dim=DIM,
            token=CLIENT_TOKEN,
        )
        result, _ = load.run(spec, CpuMeter({}))
    finally:
        stack.stop_ideal()
    if result["errors"]:
        raise RuntimeError(f"{row.name}: {result['errors']} errors")
    return round(100 * result["tps"] / ceiling(CLIENTS), 1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=2, help="times each row runs")
    parser.add_argument("--duration", type=float, default=DURATION, help="seconds per row")
    parser.add_argument("--warmup", type=float, default=WARMUP, help="seconds before each")
    parser.add_argument("--insert-ms", type=float, default=INSERT_MS)
    parser.add_argument("--claim-ms", type=float, default=CLAIM_MS)
    parser.add_argument("--complete-ms", type=float, default=COMPLETE_MS)
    parser.add_argument("--busy-ms", type=float, default=BUSY_MS)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    table = rows(args.insert_ms, args.claim_ms, args.complete_ms, args.busy_ms)
    shares: dict[str, list[float]] = {row.name: [] for row in table}
    logs = Path(tempfile.mkdtemp(prefix="embedq-bench-chain-"))
    stack, load = Stack("", log_dir=logs), LoadProcess()
    try:
        stack.start_double()
        for _ in range(max(1, args.passes)):  # passes alternate, so drift hits every row
            for row in table:
                shares[row.name].append(measure(stack, load, row, args.duration, args.warmup))
                print(f"{row.name:<48} {shares[row.name][-1]:5.1f}%", flush=True)
    finally:
        load.close()
        stack.stop()
        shutil.rmtree(logs, ignore_errors=True)
    print(f"\n32 clients, % of ceiling(32) ({ceiling(CLIENTS):,.0f} texts/s), each pass:")
    for row in table:
        runs = ", ".join(f"{v:.1f}" for v in shares[row.name])
        print(f"{row.name:<48} {statistics.mean(shares[row.name]):5.1f}%   ({runs})")
    if args.json:
        out: dict[str, Any] = {
            "machine": machine(),
            "rows": [{**asdict(row), "ceiling_pct": shares[row.name]} for row in table],
        }
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
