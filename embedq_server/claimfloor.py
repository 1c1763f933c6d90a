"""Where a claim's scan for the oldest pending input may start.

A claimed input leaves a dead entry in the pending indexes until VACUUM removes it, and
autovacuum visits a database once a minute at most: a claim that looks for the oldest
pending input from the first id walks every input claimed since, thousands of index pages
per claim under load (measured: a zero-cost 100-text load, its claims 28 -> 45 buffers per
text as the table grew). A claim whose oldest pending input had id N says that nothing
older was pending for its models then, so later claims may start at N.

Two things make an older input pending again: an insert numbered before N that commits
after the claim (a statement of a few milliseconds), and a requeue (a lease that expired,
a hand-back, a retry). So the floor lags FLOOR_LAG behind the claims that set it, this
process's requeues drop it, and one claim every FULL_SCAN_INTERVAL starts from the first
id, which finds what other processes (or an operator in psql) requeued. Nothing is lost
either way: an input below the floor waits at most that long.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

FLOOR_LAG = 1.0  # seconds a claim's oldest id waits before later claims start there
FULL_SCAN_INTERVAL = 5.0  # seconds between claims that start from the first id

_Key = tuple[str, ...]


class ClaimFloors:
    """Per set of models claimed together, the id their claims may start at."""

    def __init__(
        self,
        lag: float = FLOOR_LAG,
        full_scan_interval: float = FULL_SCAN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lag = lag
        self._full_scan_interval = full_scan_interval
        self._clock = clock
        self._floor: dict[_Key, int] = {}  # in force
        self._seen: dict[_Key, deque[tuple[float, int]]] = {}  # (claim started, oldest id)
        self._full_scan: dict[_Key, float] = {}  # when the last one started

    def start(self, models: Iterable[str]) -> tuple[float, int]:
        """For a claim about to run: (its start time, the id its scan may start at)."""
        key = _key(models)
        now = self._clock()
        if now - self._full_scan.get(key, float("-inf")) >= self._full_scan_interval:
            self._full_scan[key] = now
            return now, 0
        seen = self._seen.get(key)
        while seen and now - seen[0][0] >= self._lag:
            self._floor[key] = seen.popleft()[1]
        return now, self._floor.get(key, 0)

    def found(self, models: Iterable[str], started: float, oldest_id: int) -> None:
        """A claim that started at `started` found `oldest_id` the oldest pending input."""
        seen = self._seen.setdefault(_key(models), deque())
        while seen and seen[-1][1] >= oldest_id:  # an older input came back meanwhile
            seen.pop()
        seen.append((started, oldest_id))

    def requeued(self) -> None:
        """Inputs went back to pending here: every claim starts from the first id again."""
        self._floor.clear()
        self._seen.clear()


def _key(models: Iterable[str]) -> _Key:
    return tuple(sorted(set(models)))
