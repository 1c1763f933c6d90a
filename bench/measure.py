"""The parent's side of the load generator: one `bench.load` process for the whole run, fed a
spec per scenario; CPU is snapshotted exactly when its measuring window opens and closes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from .load import DRAIN_LIMIT, Spec
from .procs import REPO_ROOT, CpuMeter

KILL_MARGIN = 30.0  # seconds past a scenario's own limits before the generator is killed


class LoadProcess:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.load"],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def run(
        self,
        spec: Spec,
        meter: CpuMeter,
        on_progress: Callable[[int], None] | None = None,
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """Run one scenario; return the generator's result and the CPU split of its window."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(asdict(spec)) + "\n")
        self.proc.stdin.flush()
        limit = spec.warmup + spec.duration + DRAIN_LIMIT + KILL_MARGIN
        if spec.total:
            limit += 600.0  # count-bound: its size, not a clock, ends it
        watchdog = threading.Timer(limit, self.proc.kill)
        watchdog.start()
        result: dict[str, Any] | None = None
        cpu: dict[str, float] | None = None
        if spec.total:
            meter.start()
        try:
            for raw in self.proc.stdout:
                line = raw.strip()
                if line == "measuring":
                    meter.start()
                elif line == "stopped":
                    cpu = meter.stop()
                elif line.startswith("progress ") and on_progress is not None:
                    on_progress(int(line.split()[1]))
                elif line.startswith("result "):
                    result = json.loads(line.removeprefix("result "))
                    break
        finally:
            watchdog.cancel()
        if result is None:
            code = self.proc.poll()
            raise RuntimeError(f"the load generator ended without a result (exit {code})")
        return result, cpu if cpu is not None else meter.stop()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
