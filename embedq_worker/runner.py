"""The worker loop: claim -> compute -> complete, with the next batch in hand while one
computes, heartbeats for every lease held, and a graceful stop.

Shutdown is an event, not a cancellation: stop claiming, hand back what was claimed but
not started, let the batch in flight finish within the grace period, and post its
results (a post is never cancelled: shutdown waits for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    InputRejected,
    ModelNotFound,
)
from .pacing import Pipeline, RoundTrips
from .server_client import (
    Batch,
    Item,
    ItemFailure,
    LeaseLost,
    Rejected,
    ServerClient,
    ServerError,
)
from .settings import BACKOFF_MAX, WorkerSettings

log = logging.getLogger("embedq.worker")

HEARTBEAT_FRACTION = 3  # heartbeat this many times per lease period
WEDGED_FACTOR = 2  # a backend call running this many request timeouts is wedged
POST_RETRY_LIMIT = 300.0  # seconds to keep retrying a result post before giving up on it


@dataclass
class Outcome:
    """What computing one batch produced."""

    results: list[tuple[int, bytes, int]] = field(default_factory=list)
    failures: list[ItemFailure] = field(default_factory=list)
    revision: str | None = None


@dataclass
class Stats:
    batches: int = 0
    texts: int = 0
    failed: int = 0
    empty_claims: int = 0


class Runner:
    def __init__(
        self,
        settings: WorkerSettings,
        client: ServerClient,
        backends: dict[str, Backend],
        *,
        on_batch: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.backends = backends
        self.stats = Stats()
        self._on_batch = on_batch
        distinct = {id(b): b for b in backends.values()}.values()
        self.units = max(1, sum(b.concurrency for b in distinct))
        # Calls kept in flight: one computing per unit, the rest waiting at the backend.
        self.slots = self.units * max(1, settings.backend_depth)
        self._ready: asyncio.Queue[Batch] = asyncio.Queue()
        self._capacity = asyncio.Semaphore(self.slots + max(0, settings.prefetch))
        self._held: dict[str, Batch] = {}
        self._posts: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._calls: dict[object, float] = {}  # backend calls in progress -> start time
        self._pipelines: dict[str, Pipeline] = {}  # per model: its calls in flight, its costs
        self._round_trips = RoundTrips()
        self._backlog = False  # the last claim came back full: more is waiting
        self._claims: set[asyncio.Task[None]] = set()  # claims in flight
        self._claims_done = asyncio.Event()  # set while no claim is in flight
        self._claims_done.set()
        self._retry_at = 0.0  # after a failed claim: no new one before this
        self._backoff = 0.0
        self._failure: BaseException | None = None  # what stopped a claim unexpectedly
        self._last_size = 1  # texts in the last batch claimed

    async def healthy(self) -> bool:
        """For the systemd watchdog: no backend call is wedged (running far past its
        timeout). A server that is down is not unhealthy: the worker retries by itself."""
        limit = WEDGED_FACTOR * self.settings.request_timeout
        now = time.monotonic()
        return all(now - started < limit for started in self._calls.values())

    @property
    def models(self) -> list[str]:
        return sorted(self.backends)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Run until stop() (or, in burst mode, until the queue is empty)."""
        claimer = asyncio.create_task(self._claim_loop(), name="claimer")
        computers = [
            asyncio.create_task(self._compute_loop(), name=f"compute-{n}")
            for n in range(self.slots)
        ]
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        supervised = [claimer, heartbeat, *computers]
        stopper = asyncio.create_task(self._stop.wait(), name="stop")
        try:
            # A side task that dies stops the worker and says why, instead of limping on.
            done, _ = await asyncio.wait(
                [stopper, *supervised], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not stopper and not task.cancelled() and task.exception():
                    raise task.exception()  # type: ignore[misc]
            if self._failure is not None:
                raise self._failure
        finally:
            self._stop.set()
            await self._shutdown(claimer, computers, heartbeat)
            stopper.cancel()

    async def _shutdown(
        self,
        claimer: asyncio.Task[None],
        computers: list[asyncio.Task[None]],
        heartbeat: asyncio.Task[None],
    ) -> None:
        claimer.cancel()
        for claim in list(self._claims):  # the server hands back what a hung-up claim got
            claim.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await claimer
        await asyncio.gather(*self._claims, return_exceptions=True)
        await self._release_unstarted()
        # The batches in flight get the grace period to finish and post.
        for _ in computers:
            self._ready.put_nowait(_STOP)
        _, late = await asyncio.wait(computers, timeout=self.settings.shutdown_grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        if self._posts:
            await asyncio.wait(list(self._posts), timeout=self.settings.shutdown_grace)
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        log.info(
            "worker stopped batches=%d texts=%d failed=%d",
            self.stats.batches,
            self.stats.texts,
            self.stats.failed,
        )

    async def _release_unstarted(self) -> None:
        while not self._ready.empty():
            batch = self._ready.get_nowait()
            if batch is _STOP:
                continue
            self._held.pop(batch.lease, None)
            try:
                released = await self.client.release(batch.lease, [i.id for i in batch.items])
                log.info("handed back unstarted batch lease=%s n=%d", batch.lease, len(released))
            except (ServerError, LeaseLost, Rejected) as exc:
                log.warning("could not hand back lease=%s error=%s", batch.lease, exc)

    # -- claiming --------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        """Claim while there is room: one claim at a time, timed just in time, except
        while claims come back full (a backlog): then the next goes without waiting for
        the one in flight, and so they do when a claim's round trip outlasts a call (a
        worker far from its server), so the GPU stays fed."""
        while not self._stop.is_set():
            await self._capacity.acquire()
            if not self._backlog and not self._far():
                await self._claims_done.wait()
            await self._sleep(max(self._prefetch_delay(), self._retry_at - time.monotonic()))
            if self._stop.is_set():
                self._capacity.release()
                return
            self._claims_done.clear()
            claim = asyncio.create_task(self._claim_one(), name="claim")
            self._claims.add(claim)
            claim.add_done_callback(self._claim_ended)

    def _far(self) -> bool:
        """A claim's round trip outlasts a call: one claim at a time cannot keep up."""
        trip = self._round_trips.estimate()
        for pipeline in self._pipelines.values():
            cost = pipeline.cost(self._last_size)
            if cost is not None and trip > cost:
                return True
        return False

    def _claim_ended(self, claim: asyncio.Task[None]) -> None:
        self._claims.discard(claim)
        if not self._claims:
            self._claims_done.set()
        if not claim.cancelled() and claim.exception() is not None:
            self._failure = claim.exception()
            self._stop.set()

    async def _claim_one(self) -> None:
        """One claim; its batch goes to the compute slots, or its room back."""
        try:
            wait = 0.0 if self.settings.burst else self.settings.claim_wait
            sent = time.monotonic()
            batch = await self.client.claim(self.settings.batch_size, wait)
        except ServerError as exc:
            self._capacity.release()
            failing = self._backoff > 0  # the previous claim failed too: back off further
            self._backoff = (
                min(self._backoff * 2, BACKOFF_MAX) if failing else self.settings.poll_interval
            )
            self._retry_at = time.monotonic() + self._backoff
            log.warning("claim failed error=%s; retry in %.1fs", exc, self._backoff)
            return
        except BaseException:
            self._capacity.release()
            raise
        self._backoff = self._retry_at = 0.0
        if not batch.items:
            self._backlog = False
            self._capacity.release()
            self.stats.empty_claims += 1
            if self.settings.burst and not self._held and len(self._claims) == 1:  # only this
                log.info("queue empty: burst mode done")
                self._stop.set()
            return
        self._round_trips.observe(time.monotonic() - sent)
        self._backlog = len(batch.items) >= self.settings.batch_size
        self._last_size = len(batch.items)
        self._held[batch.lease] = batch
        await self._ready.put(batch)

    def _prefetch_delay(self) -> float:
        """How long to hold the next claim: none while a unit is idle or the last claim
        came back full (more is waiting: a later claim would not be bigger); otherwise
        until the claim's texts would reach the backend just before it drains (pacing.py),
        so the claim collects everything that arrives meanwhile."""
        if self._backlog:
            return 0.0
        now = time.monotonic()
        delay = 0.0
        for pipeline in self._pipelines.values():
            if pipeline.in_flight < pipeline.units:
                return 0.0
            at = pipeline.claim_at(now, self._last_size, self._round_trips.estimate())
            if at is None:
                return 0.0
            delay = max(delay, at - now)
        return delay

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # -- computing -------------------------------------------------------------------------

    def _pipeline(self, model: str, backend: Backend) -> Pipeline:
        """One per backend (models on one backend share its units and its queue)."""
        found = self._pipelines.get(model)
        if found is None:
            shared = [p for m, p in self._pipelines.items() if self.backends[m] is backend]
            found = shared[0] if shared else Pipeline(backend.concurrency)
            self._pipelines[model] = found
        return found

    async def _compute_loop(self) -> None:
        while True:
            batch = await self._ready.get()
            if batch is _STOP:
                return
            try:
                outcome, elapsed = await self._compute_with_retries(batch)
            except asyncio.CancelledError:
                # Past the grace period: hand the batch back rather than let it expire.
                await asyncio.shield(self._release_quietly(batch))
                raise
            finally:
                self._capacity.release()
            # Never cancelled (shutdown waits for it): a result computed is worth delivering.
            post = asyncio.create_task(
                self._post_until_done(batch, outcome, elapsed), name=f"post-{batch.lease}"
            )
            self._posts.add(post)
            post.add_done_callback(self._posts.discard)

    async def _compute_with_retries(self, batch: Batch) -> tuple[Outcome, float | None]:
        """The batch's outcome, and how long its backend call took (None: not computed,
        handed back after the backend stayed unavailable)."""
        backend = self.backends[batch.model]
        backoff = self.settings.poll_interval
        deadline = time.monotonic() + self.settings.backend_retry_limit
        pipeline = self._pipeline(batch.model, backend)
        while True:
            call = object()
            sent = time.monotonic()
            pipeline.dispatch(call, len(batch.items), sent)
            try:
                outcome = await self._compute(backend, batch, batch.items)
            except BackendUnavailable as exc:
                pipeline.finish(call, time.monotonic(), learn=False)
                if time.monotonic() + backoff > deadline or self._stop.is_set():
                    log.warning(
                        "backend unavailable, handing batch back model=%s n=%d error=%s",
                        batch.model,
                        len(batch.items),
                        exc,
                    )
                    failed = _fail_all(batch, f"backend unavailable: {exc}", "backend_error", True)
                    return failed, None
                log.warning(
                    "backend unavailable model=%s error=%s; retry in %.1fs",
                    batch.model,
                    exc,
                    backoff,
                )
                await self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            except BaseException:
                pipeline.finish(call, time.monotonic(), learn=False)
                raise
            ended = time.monotonic()
            pipeline.finish(call, ended, learn=not outcome.failures)
            self.stats.batches += 1
            self.stats.texts += len(outcome.results)
            self.stats.failed += len(outcome.failures)
            return outcome, ended - sent

    def _computed(self, batch: Batch, outcome: Outcome, elapsed: float) -> None:
        if self._on_batch is not None:
            self._on_batch(batch.model, len(batch.items), elapsed)
        log.info(
            "batch computed model=%s batch=%d ms=%.1f failed=%d lease=%s",
            batch.model,
            len(batch.items),
            elapsed * 1000,
            len(outcome.failures),
            batch.lease,
        )

    async def _compute(self, backend: Backend, batch: Batch, items: list[Item]) -> Outcome:
        """One backend call for `items`; a rejected batch is split to find the bad inputs,
        so one over-long input fails alone and the rest complete."""
        call = object()
        self._calls[call] = time.monotonic()
        try:
            result = await backend.embed(batch.model, [i.input for i in items], batch.dimensions)
        except InputRejected as exc:
            if len(items) == 1:
                return Outcome(
                    failures=[ItemFailure(items[0].id, str(exc), "input_rejected", False)]
                )
            mid = len(items) // 2
            left = await self._compute(backend, batch, items[:mid])
            right = await self._compute(backend, batch, items[mid:])
            return Outcome(
                left.results + right.results,
                left.failures + right.failures,
                left.revision or right.revision,
            )
        except ModelNotFound as exc:
            return _fail_items(items, str(exc), "model_not_found", False)
        except BackendUnavailable:
            raise
        except BackendError as exc:
            return _fail_items(items, str(exc), "backend_error", exc.retryable)
        finally:
            del self._calls[call]
        if len(result.vectors) != len(items):
            return _fail_items(
                items,
                f"the backend returned {len(result.vectors)} vectors for {len(items)} inputs",
                "backend_error",
                True,
            )
        return Outcome(
            results=[
                (item.id, vec, tok)
                for item, vec, tok in zip(items, result.vectors, result.tokens, strict=True)
            ],
            revision=result.model_revision,
        )

    # -- posting ---------------------------------------------------------------------------

    async def _post_until_done(
        self, batch: Batch, outcome: Outcome, elapsed: float | None = None
    ) -> None:
        """Post a batch's results, retrying while the server is unreachable; then count
        and log the batch (`elapsed`: its backend call; None: not computed). Done before
        the post, that took ~0.1 ms of CPU off the path of an idle request, and done just
        after sending (the client writes the body in a task of its own) it slowed the
        send as much (bench/HISTORY.md)."""
        backoff = self.settings.poll_interval
        deadline = time.monotonic() + POST_RETRY_LIMIT
        try:
            while True:
                try:
                    answer = await self.client.complete(
                        batch.lease, outcome.results, outcome.failures, outcome.revision
                    )
                    if answer.get("refused"):
                        log.warning(
                            "server refused results lease=%s refused=%d (lease expired)",
                            batch.lease,
                            len(answer["refused"]),
                        )
                    return
                except LeaseLost as exc:
                    log.warning("results refused lease=%s: %s", batch.lease, exc)
                    return
                except Rejected as exc:
                    log.error("results rejected lease=%s: %s", batch.lease, exc)
                    return
                except ServerError as exc:
                    if time.monotonic() > deadline:
                        log.error("giving up posting lease=%s error=%s", batch.lease, exc)
                        return
                    log.warning("posting failed error=%s; retry in %.1fs", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            self._held.pop(batch.lease, None)
            if elapsed is not None:
                self._computed(batch, outcome, elapsed)

    async def _release_quietly(self, batch: Batch) -> None:
        self._held.pop(batch.lease, None)
        with contextlib.suppress(ServerError, LeaseLost, Rejected):
            await self.client.release(batch.lease, [i.id for i in batch.items])

    # -- heartbeats ------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            period = min((b.lease_seconds for b in self._held.values()), default=60.0)
            await asyncio.sleep(max(period / HEARTBEAT_FRACTION, 0.2))
            for lease in list(self._held):
                try:
                    await self.client.heartbeat(lease)
                except LeaseLost:
                    if lease in self._held:  # not merely finished since the loop started
                        log.warning("lease lost lease=%s (expired; results will be refused)", lease)
                except (ServerError, Rejected) as exc:
                    log.warning("heartbeat failed lease=%s error=%s", lease, exc)


_STOP = Batch(lease="", lease_seconds=0.0, items=[])


def _fail_items(items: list[Item], error: str, code: str, retry: bool) -> Outcome:
    return Outcome(failures=[ItemFailure(i.id, error, code, retry) for i in items])


def _fail_all(batch: Batch, error: str, code: str, retry: bool) -> Outcome:
    return _fail_items(batch.items, error, code, retry)


async def run_until_signal(
    runner: Runner, started: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Run the worker; SIGTERM/SIGINT start a graceful stop."""
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)
    try:
        if started is not None:
            await started()
        await runner.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
