"""Child processes of a benchmark run (server, workers, double, proxy) and what /proc says
about them: CPU seconds and resident memory, so a scenario shows where the cores went."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0  # seconds for a child to listen or log that it is up
STOP_TIMEOUT = 15.0  # seconds a child gets after SIGTERM before SIGKILL
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class Child:
    """One child process with its log file; `url` once it listens."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)


def spawn(
    name: str,
    module: str,
    args: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    log_dir: Path | None = None,
) -> Child:
    """Start `python -m module args` in the repository with env added; output to a log file
    in `log_dir` (the run's own directory, kept only when the run fails)."""
    log = tempfile.NamedTemporaryFile(
        prefix=f"embedq-bench-{name}-", suffix=".log", delete=False, dir=log_dir
    )
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return Child(name, proc, Path(log.name))


def wait_for_log(child: Child, needle: str, timeout: float = START_TIMEOUT) -> str:
    """Wait until the child's log holds `needle`; return the line that holds it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in child.log().splitlines():
            if needle in line:
                return line
        if not child.alive():
            raise RuntimeError(f"{child.name} exited {child.proc.returncode}:\n{child.log()}")
        time.sleep(0.05)
    raise TimeoutError(f"{child.name}: {needle!r} not seen in {timeout:.0f}s:\n{child.log()}")


def wait_listening(child: Child, timeout: float = START_TIMEOUT) -> str:
    """For children that print `listening on URL` (the doubles, the proxy): the URL."""
    line = wait_for_log(child, "listening on ", timeout)
    child.url = line.split("listening on ", 1)[1].strip()
    return child.url


def wait_healthy(child: Child, url: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited {child.proc.returncode}:\n{child.log()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    child.url = url
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{child.name} not healthy at {url} after {timeout:.0f}s:\n{child.log()}")


# -- /proc -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kb(pid: int) -> int:
    """Resident memory of one process in KiB (0 when it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
    except OSError:
        return 0


def postgres_pids(marker: str) -> list[int]:
    """The PostgreSQL cluster whose postmaster's command line holds `marker` (its data
    directory): the postmaster and its children (backends, background processes). Other
    clusters on the machine (other people's tests) are left out."""
    procs: dict[int, tuple[int, str]] = {}  # pid -> (ppid, cmdline)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        procs[int(entry.name)] = (ppid, cmdline)
    masters = {pid for pid, (_, cmd) in procs.items() if marker and marker in cmd}
    return [pid for pid, (ppid, _) in procs.items() if pid in masters or ppid in masters]


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent not idle, since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS


@dataclass
class CpuMeter:
    """CPU used by named process groups between two snapshots, as % of one core.
    "postgres" is the bench cluster's processes (`postgres_marker`: its data directory);
    "other" is what the rest of the machine used meanwhile (other people's work too)."""

    groups: dict[str, list[int]] = field(default_factory=dict)
    postgres_marker: str = ""
    _start: dict[str, dict[int, float]] = field(default_factory=dict)
    _machine: float = 0.0
    _wall: float = 0.0

    def _read(self) -> dict[str, dict[int, float]]:
        groups = dict(self.groups)
        if self.postgres_marker:
            groups["postgres"] = postgres_pids(self.postgres_marker)
        return {name: {p: cpu_seconds(p) for p in pids} for name, pids in groups.items()}

    def start(self) -> None:
        self._start = self._read()
        self._machine = machine_busy_seconds()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        wall = max(time.monotonic() - self._wall, 1e-9)
        end = self._read()
        machine = machine_busy_seconds() - self._machine
        used: dict[str, float] = {}
        for name, pids in end.items():
            before = self._start.get(name, {})
            # A process that ended in between takes its time with it: counted low, never < 0.
            used[name] = sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in pids.items())
        used["other"] = max(0.0, machine - sum(used.values()))
        used["machine"] = machine
        return {name: round(100 * seconds / wall, 1) for name, seconds in used.items()}
