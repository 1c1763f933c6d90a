"""When to claim the next batch: just in time, not as early as possible.

A claim sent the moment a batch starts computing returns with whatever is pending then
(often one text), so batches stay tiny and the GPU pays its fixed cost per call over and
over. Sent just before the GPU frees up, the claim collects everything that arrived while
it computed. The worker learns what a batch costs (fixed + per text) and what a claim's
round trip costs, and sends the next claim when compute end minus round trip is reached.
"""

from __future__ import annotations

from collections import deque

FORGET = 0.1  # weight of the newest observation in the running averages
MIN_SAMPLES = 3  # batches seen before the cost model is trusted
RTT_WINDOW = 16  # claims remembered for the round-trip estimate


class CostModel:
    """An online least-squares fit of seconds = fixed + per_text * texts, with forgetting,
    so it follows a backend whose speed changes (another model, a warmer GPU)."""

    def __init__(self) -> None:
        self._n = 0
        self._x = self._y = self._xx = self._xy = 0.0

    def observe(self, texts: int, seconds: float) -> None:
        w = 1.0 if self._n == 0 else FORGET
        self._n += 1
        self._x += w * (texts - self._x)
        self._y += w * (seconds - self._y)
        self._xx += w * (texts * texts - self._xx)
        self._xy += w * (texts * seconds - self._xy)

    def estimate(self, texts: int) -> float | None:
        """Expected seconds for a batch of `texts`, or None until enough was seen."""
        if self._n < MIN_SAMPLES:
            return None
        variance = self._xx - self._x * self._x
        if variance <= 1e-9:  # every batch had the same size: no slope to fit
            return max(self._y, 0.0)
        slope = max((self._xy - self._x * self._y) / variance, 0.0)
        fixed = max(self._y - slope * self._x, 0.0)
        return fixed + slope * texts


class RoundTrips:
    """The fastest recent claim round trips: claims that found work waiting cost only the
    network and one statement; the minimum over a window ignores those that long-polled."""

    def __init__(self) -> None:
        self._seen: deque[float] = deque(maxlen=RTT_WINDOW)

    def observe(self, seconds: float) -> None:
        self._seen.append(seconds)

    def estimate(self) -> float:
        return min(self._seen, default=0.0)
