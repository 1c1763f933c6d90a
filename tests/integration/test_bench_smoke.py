"""The benchmark harness runs end to end (`python -m bench.run --quick`) and writes the JSON
the README describes. Speed is never asserted here: this machine's load is not ours to know."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.scenarios import ZERO_BATCH
from tests.doubles.common import REPO_ROOT

SCENARIOS = {"floor", "idle-pull", "c32-oracle", "idle-direct", "idle",
             "c32-direct", "c32", "c256", "t100", "c32-rtt", "zero-1", "zero-100"}  # fmt: skip
WORKING = (
    "floor",
    "idle-pull",
    "idle-direct",
    "idle",
    "zero-1",
)  # answer within a 1-s window even when busy
SCENARIO_KEYS = {"via", "clients", "texts_per_request", "requests", "rps", "tps", "p50_ms",
                 "p99_ms", "errors", "ceiling", "ceiling_pct", "cpu"}  # fmt: skip


def run_module(pg_url: str, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m module args` against pg_url's server; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env={**os.environ, "DATABASE_URL": pg_url},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_quick_run_writes_every_section(pg_url: str, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = run_module(pg_url, "bench.run", "--quick", "--duration", "1", "--json", str(out))
    results = json.loads(out.read_text())
    assert {"machine", "config", "scenarios", "repeat", "soak", "targets"} <= results.keys()
    assert SCENARIOS <= results["scenarios"].keys()
    for name in SCENARIOS:
        assert SCENARIO_KEYS <= results["scenarios"][name].keys(), name
        assert results["scenarios"][name]["errors"] == 0, name
    for name in WORKING:
        assert results["scenarios"][name]["requests"] > 0, name
    # The zero-cost worker's claims are counted from the server's /metrics.
    zero = results["scenarios"]["zero-1"]
    assert zero["worker_batch_size"] == ZERO_BATCH
    assert zero["mean_batch"] is not None and 1 <= zero["mean_batch"] <= ZERO_BATCH
    assert results["repeat"]["passes"]["first"]["computed"] == results["repeat"]["texts"]
    assert {"server", "worker"} <= results["soak"]["kib_per_1000_requests"].keys()
    assert all({"target", "limit", "measured", "met"} <= t.keys() for t in results["targets"])
    assert "target" in done.stdout and "verdict" in done.stdout
    # c32 is read against the ideal batchers (bench/ideal.py), each of which was measured.
    ideal = results["against_ideal"]
    assert ideal["c32_share_pct"].keys() == {
        "c32-greedy",
        "c32-oracle",
        "c32-pull",
        "c32-pull-greedy",
        "c32-nodb",
        "c32-behind",
        "c32-behind-probe",
    }
    assert ideal["c32_share_pct"]["c32-oracle"] is not None
    assert "c32-greedy" not in results["scenarios"]  # supplementary: only when named
    assert ideal["idle_over_direct_ms"]["idle-pull"] is not None
    assert "cap16_share_of_ceiling32_pct" in ideal  # measured in full runs
    assert "against an ideal batcher: c32-oracle" in done.stdout


def test_the_server_without_its_database_answers(pg_url: str, tmp_path: Path) -> None:
    """bench.nodb (embedq's server with its queue in memory, the write-behind yardstick)
    answers embedq's worker and the load generator, every request, no errors."""
    out = tmp_path / "nodb.json"
    run_module(pg_url, "bench.run", "--only", "idle-nodb", "--duration", "1", "--soak", "0",
               "--json", str(out))  # fmt: skip
    result = json.loads(out.read_text())["scenarios"]["idle-nodb"]
    assert result["requests"] > 0
    assert result["errors"] == 0
    assert result["mean_batch"] == 1  # one client: every call carried its one text


def test_the_cold_step_measurement_runs(pg_url: str) -> None:
    """`python -m bench.cold` (quoted in bench/README): every step timed both ways."""
    done = run_module(pg_url, "bench.cold", "--rounds", str(40))
    rows = [line for line in done.stdout.splitlines() if line.rstrip().endswith("x")]
    assert [row.split("  ")[0] for row in rows] == [
        "submit statement (1 input)",
        "SELECT 1",
        "HTTP round trip (bench/floor.py)",
    ]
    assert all(row.count(" ms") == 2 for row in rows)


def test_the_chain_model_runs_every_row(pg_url: str, tmp_path: Path) -> None:
    """`python -m bench.chain` (quoted in bench/README): each part of embedq's path, added
    to the pull shape one at a time, measured and written out."""
    out = tmp_path / "chain.json"
    args = ("--passes", "1", "--duration", "0.3", "--warmup", "0.2", "--json", str(out))
    done = run_module(pg_url, "bench.chain", *args)
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["insert"] == rows[0]["claim"] == rows[0]["complete"] == 0
    assert rows[-1]["insert"] > 0 and rows[-1]["complete"] > 0 and rows[-1]["busy"] > 0
    assert all(len(row["ceiling_pct"]) == 1 and row["ceiling_pct"][0] > 0 for row in rows)
    assert "embedq's path today" in done.stdout
