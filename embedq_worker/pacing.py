"""When to claim the next batch: just in time, not as early as possible.

A claim sent the moment a batch starts computing returns with whatever is pending then
(often one text), so batches stay tiny and the GPU pays its fixed cost per call over and
over. Sent just before the GPU frees up, the claim collects everything that arrived while
it computed. The worker learns what a batch costs (fixed + per text) and what a claim's
round trip costs, and sends the next claim when compute end minus round trip is reached,
less a small margin: a call that arrives late leaves the GPU idle for the whole delay,
while one that arrives early only leaves the texts of the last moments to the next call.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

FORGET = 0.1  # weight of the newest observation in the running averages
MIN_SAMPLES = 3  # batches seen before the cost model is trusted
RTT_WINDOW = 16  # claims remembered for the round-trip estimate
# Seconds before the expected drain that a claim's texts aim to reach the backend. Aimed at
# the drain itself, half the calls came late (every hop's p90 is 2-4 times its median under
# load): in bench/ideal_pull.py's timed puller, which times its claims with this module,
# 32 clients got 62-79% of ceiling(32) from run to run without it and 78-79% with 3-4 ms.
CLAIM_MARGIN = 0.003


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
    """A claim's round trip: the median of the recent ones that brought work. The fastest
    one (the network and one statement on a quiet server) made claims arrive late under
    load, leaving the GPU idle; a claim that long-polled only makes the estimate early."""

    def __init__(self) -> None:
        self._seen: deque[float] = deque(maxlen=RTT_WINDOW)

    def observe(self, seconds: float) -> None:
        self._seen.append(seconds)

    def estimate(self) -> float:
        seen = sorted(self._seen)
        return seen[(len(seen) - 1) // 2] if seen else 0.0


@dataclass
class _Call:
    texts: int
    dispatched: float
    started: float | None  # reached a free unit (None: waiting behind another call)


class Pipeline:
    """The backend calls in flight as the worker sees them, to time the next claim.

    A backend has `units` that compute (one per Ollama instance, say) and the worker keeps
    more calls in flight than that, so a call waits at the backend while the one ahead of
    it computes and the GPU never idles between calls. A call that reaches a free unit
    takes longer than one that waited: the backend's own work before computing (reading
    the request, tokenizing) overlaps the call ahead only for a waiting call. That
    difference is the *lead*: how long before the backend drains the next call should
    reach it. Both costs are learned (`fresh` for calls that met a free unit, `queued` for
    calls timed from the moment the call ahead of them ended).
    """

    def __init__(self, units: int) -> None:
        self.units = max(1, units)
        self.fresh = CostModel()
        self.queued = CostModel()
        self._calls: dict[object, _Call] = {}  # in dispatch order

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    def dispatch(self, key: object, texts: int, now: float) -> None:
        computing = sum(1 for c in self._calls.values() if c.started is not None)
        started = now if computing < self.units else None
        self._calls[key] = _Call(texts, now, started)

    def finish(self, key: object, now: float, *, learn: bool) -> float:
        """The call ended (`learn`: normally, so its time teaches the cost models); the
        oldest waiting call now computes. Returns the call's compute time as timed."""
        call = self._calls.pop(key)
        fresh = call.started == call.dispatched
        seconds = now - (call.started if call.started is not None else call.dispatched)
        if learn:
            (self.fresh if fresh else self.queued).observe(call.texts, seconds)
        if call.started is not None:  # it freed a unit: the oldest waiting call takes it
            for waiting in self._calls.values():
                if waiting.started is None:
                    waiting.started = now
                    break
        return seconds

    def _cost(self, texts: int, waited: bool) -> float | None:
        first, second = (self.queued, self.fresh) if waited else (self.fresh, self.queued)
        estimate = first.estimate(texts)
        return estimate if estimate is not None else second.estimate(texts)

    def cost(self, texts: int) -> float | None:
        """What a call of `texts` takes from reaching the backend to its answer."""
        return self._cost(texts, waited=False)

    def lead(self, texts: int) -> float:
        fresh, queued = self.fresh.estimate(texts), self.queued.estimate(texts)
        if fresh is None or queued is None:
            return 0.0
        return max(0.0, fresh - queued)

    def claim_at(self, now: float, texts: int, round_trip: float) -> float | None:
        """When to send the claim for the next call (of about `texts`): its texts should
        reach the backend CLAIM_MARGIN before it drains, the lead its call needs earlier
        still. None: the costs are not known yet (claim now)."""
        drain = self.drain_at(now)
        if drain is None:
            return None
        return drain - self.lead(texts) - round_trip - CLAIM_MARGIN

    def drain_at(self, now: float) -> float | None:
        """When every call in flight is expected to have ended (None: costs not known)."""
        work = 0.0
        for call in self._calls.values():
            waited = call.started is None or call.started != call.dispatched
            cost = self._cost(call.texts, waited)
            if cost is None:
                return None
            if call.started is None:
                work += cost
            else:
                work += max(0.0, call.started + cost - now)
        return now + work / self.units
