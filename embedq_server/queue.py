"""The queue's verbs: submit, wait, claim, heartbeat, complete, fail, release, maintain.

Knows PostgreSQL and the listener, nothing of HTTP. Every state change is one statement
fenced inside its UPDATE (never read-then-write), so concurrent workers, late results and
the maintenance pass cannot overwrite each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import asyncpg

from . import metrics
from .claimfloor import ClaimFloors
from .grouping import Grouped
from .handed import HandedTasks
from .handoff import HandOff, Offer, Submission
from .inhand import VectorsInHand
from .listener import Listener
from .outage import DATABASE_DOWN, TaskUnreachable
from .records import (
    Claim,
    ClaimedItem,
    Failure,
    Task,
    WorkerInfo,
    claimed_from_row,
    fingerprint,
    task_with_results,
)
from .settings import MAINTENANCE_BATCH, Settings
from .sql import QUERIES

log = logging.getLogger("embedq.queue")

PENDING_CACHE_SECONDS = 1.0  # how stale the backpressure count may be
WORKER_TOUCH_SECONDS = 5.0  # how often a worker's registration row is refreshed
SERVED_CACHE_SECONDS = 2.0  # how stale "which models have a live worker" may be
WORK_NOTIFY_INTERVAL = 0.02  # seconds: at most one cross-process "new work" NOTIFY per model
SUBMITS_IN_FLIGHT = 2  # group inserts at once: one commits while the next group gathers
DOWN_RETRY = 0.5  # seconds between re-reads of a waited-for task while the database is down
ANSWER_FIRST_WAIT = 0.005  # seconds a completion waits for the answers it sent ahead
STORE_BEHIND_WAIT = 0.010  # seconds results answered ahead wait for the next insert
UNSTORED_WAIT = 0.5  # seconds results for inputs not stored yet are tried again (complete)
UNSTORED_RETRY = 0.01  # seconds before the first try again, doubling


class Queue:
    def __init__(self, pool: asyncpg.Pool, listener: Listener, settings: Settings) -> None:
        self.pool = pool
        self.listener = listener
        self.settings = settings
        self._pending_count = 0
        self._pending_checked = 0.0
        self._worker_touched: dict[str, float] = {}
        self._revisions: dict[str, str | None] = {}
        self._served: tuple[frozenset[str], float] = (frozenset(), float("-inf"))
        self._work_notified: dict[str, float] = {}  # model -> when work was last announced
        self._work_trailing: set[str] = set()  # models with a trailing announcement due
        self._background: set[asyncio.Task[None]] = set()
        self._handed = HandedTasks(settings.lease_seconds)  # tasks handed whole to an offer
        self._handoff = HandOff(pool, self._handed)  # claims waiting here
        self._floors = ClaimFloors()  # where claims start looking for pending inputs
        self._in_hand = VectorsInHand(settings.lease_seconds)  # of tasks split over batches
        self._answering: dict[str, asyncio.Future[None]] = {}  # see _answer_first
        self._next_insert: asyncio.Future[None] | None = None  # see _store_behind
        self._submits = Grouped(
            self._submit_group,
            "submit-tasks",
            in_flight=SUBMITS_IN_FLIGHT,
            isolate=_refused_value,
        )
        self._reads = Grouped(self._read_group, "read-tasks")
        self.closing = False

    def close(self) -> None:
        """Shutdown: every waiting request and claim returns now with what it has."""
        self.closing = True
        self.listener.wake_everyone()

    # -- clients ---------------------------------------------------------------------------

    async def pending_inputs(self) -> int:
        """Inputs waiting for a worker; cached briefly, since every request asks."""
        now = time.monotonic()
        if now - self._pending_checked > PENDING_CACHE_SECONDS:
            self._pending_count = await self.pool.fetchval(QUERIES["pending_count"])
            self._pending_checked = now
        return self._pending_count

    async def submit(
        self,
        owner: str,
        model: str,
        dimensions: int,
        inputs: Sequence[str],
        task_id: str | None = None,
    ) -> tuple[str, bool, bool]:
        """Store a request (in one statement shared with the requests arriving with it);
        return (task id, attached, finished). An
        identical request by the same client that has not failed is reused (attached)
        instead of computed again; inputs found in the cache are stored completed."""
        task_id = task_id or str(uuid.uuid4())
        row = await self._submits(
            Submission(
                uuid.UUID(task_id),
                owner,
                fingerprint(owner, model, dimensions, inputs),
                model,
                dimensions,
                inputs,
                self._cache_scope(owner),
            )
        )
        if row["attached"]:
            return str(row["id"]), True, False
        hits = row["hits"]
        if hits:
            metrics.count_outcome(model, "cached", hits)
        pending = len(inputs) - hits - len(row["leased_ids"] or ())
        self._pending_count += pending
        if pending:
            self.announce_work(model)
        return task_id, False, hits == len(inputs)

    async def _submit_group(self, group: list[Submission]) -> list[asyncpg.Record]:
        """One statement (one commit) for the requests that arrived together; requests
        that fit a claim waiting here are stored leased to it, and handed to it before
        that statement when the probe allows (see handoff.py)."""
        offers = self._handoff.match(group)
        ahead: dict[int, list[int]] = {}
        try:
            try:
                ahead = await self._handoff.ahead(group, offers)
                rows = await self._insert_group(group, offers, ahead)
            except BaseException:
                self._handoff.failed(offers)
                raise
            return self._handoff.give(group, offers, rows)
        finally:
            self._handoff.settled(offers, ahead)
            if self._next_insert is not None and not self._next_insert.done():
                self._next_insert.set_result(None)

    async def _insert_group(
        self,
        group: list[Submission],
        offers: list[Offer | None],
        ahead: dict[int, list[int]],
    ) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.pool.fetch(
            QUERIES["submit_tasks"],
            [s.task_id for s in group],
            [s.owner for s in group],
            [s.fingerprint for s in group],
            [s.model for s in group],
            [s.dimensions for s in group],
            [len(s.inputs) for s in group],
            [None if k in ahead else s.scope for k, s in enumerate(group)],
            [s.task_id for s in group for _ in s.inputs],
            [i for s in group for i in range(len(s.inputs))],
            [text for s in group for text in s.inputs],
            [o.lease if o is not None else None for o in offers],
            [o.worker if o is not None else None for o in offers],
            self.settings.lease_seconds,
            [k in ahead for k in range(len(group))],
            [i for k, s in enumerate(group) for i in ahead.get(k, [None] * len(s.inputs))],
        )
        return rows

    def announce_work(self, model: str) -> None:
        """Wake claimers of new work: in this process at once; in other server processes by
        at most one NOTIFY per model per WORK_NOTIFY_INTERVAL (a trailing one covers the
        submits in between), since every notifying commit serialises on PostgreSQL's
        global notify lock through its WAL flush."""
        self.listener.announce_work()
        loop = asyncio.get_running_loop()
        since = loop.time() - self._work_notified.get(model, float("-inf"))
        if since >= WORK_NOTIFY_INTERVAL:
            self._send_work_notify(model)
        elif model not in self._work_trailing:
            self._work_trailing.add(model)
            loop.call_later(WORK_NOTIFY_INTERVAL - since, self._send_work_notify, model)

    def _send_work_notify(self, model: str) -> None:
        self._work_trailing.discard(model)
        self._work_notified[model] = asyncio.get_running_loop().time()
        self._in_background(self._notify_work(model), "notify-work")

    def _in_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run `work` on its own, keeping a reference until it ends."""
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _notify_work(self, model: str) -> None:
        try:
            await self.pool.execute(QUERIES["notify_work"], model)
        except DATABASE_DOWN as exc:  # the listeners' reconnect wakes every claimer anyway
            log.warning("could not announce work model=%s error=%r", model, exc)

    async def submit_and_wait(
        self, owner: str, model: str, dimensions: int, inputs: Sequence[str], timeout: float
    ) -> Task | None:
        """POST /v1/embeddings in one call: store the request, then wait for its result.
        A task just inserted cannot be done before a notification, so the first read waits
        for one: the request costs one statement to store and one to answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        task_id = str(uuid.uuid4())
        with self.listener.watch_task(task_id) as woken:  # before the insert commits
            task_id, attached, finished = await self.submit(
                owner, model, dimensions, inputs, task_id
            )
            if not attached and not finished and timeout > 0:
                first = min(timeout, self.settings.backstop_interval)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(first):
                        known = await woken
                    if isinstance(known, Task):
                        return self._answering_now(known)
        return await self.wait(task_id, max(deadline - loop.time(), 0.0))

    def _cache_scope(self, owner: str) -> str | None:
        mode = self.settings.cache
        return None if mode == "off" else "" if mode == "global" else owner

    async def read(self, task_id: str) -> Task | None:
        """The task, with its results when it completed. Reads asked for together (the
        requests one completed batch woke) share one statement."""
        return await self._reads(task_id)

    async def _read_group(self, task_ids: list[str]) -> list[Task | None]:
        rows = await self.pool.fetch(
            QUERIES["get_tasks_with_results"], [uuid.UUID(t) for t in set(task_ids)]
        )
        found = {str(row["id"]): task_with_results(row) for row in rows}
        return [found.get(t) for t in task_ids]

    async def wait(self, task_id: str, timeout: float) -> Task | None:
        """Wait until the task is done or the timeout passes; return its latest state.
        Wakes on NOTIFY; re-reads every backstop interval in case one was lost. While the
        database is unreachable it keeps trying until the deadline (the listener wakes
        everyone when it reconnects), then raises TaskUnreachable naming the task."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self.listener.watch_task(task_id) as woken:
                try:
                    task = await self.read(task_id)
                except DATABASE_DOWN as exc:
                    if deadline - loop.time() <= 0 or self.closing:
                        raise TaskUnreachable(task_id) from exc
                    await asyncio.sleep(min(DOWN_RETRY, max(deadline - loop.time(), 0)))
                    continue
                left = deadline - loop.time()
                if task is None or task.done or left <= 0 or self.closing:
                    return task
                pause = min(left, self.settings.backstop_interval)
                try:
                    known = await asyncio.wait_for(woken, pause)
                except TimeoutError:
                    continue
                if isinstance(known, Task):  # the completion in this process had it all
                    return self._answering_now(known)

    async def item_states(self, task_id: str) -> asyncpg.Record:
        return await self.pool.fetchrow(QUERIES["task_item_states"], uuid.UUID(task_id))

    # -- workers ---------------------------------------------------------------------------

    async def touch_worker(self, worker: WorkerInfo, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._worker_touched.get(worker.name, 0.0) < WORKER_TOUCH_SECONDS:
            return
        self._worker_touched[worker.name] = now
        await self.pool.execute(
            QUERIES["touch_worker"],
            worker.name,
            worker.version,
            list(worker.models),
            worker.backend,
            worker.host,
        )

    async def claim(
        self,
        worker: WorkerInfo,
        models: Sequence[str],
        max_items: int,
        wait: float,
        gone: Callable[[], bool] = lambda: False,
    ) -> Claim:
        """Lease up to max_items inputs of one model; if there are none, wait up to `wait`
        seconds for a "new work" notification and try again. `gone` says the worker hung up
        (it stopped): then nothing is leased, or what was just leased is handed back, rather
        than left leased to nobody until the lease expires."""
        await self.touch_worker(worker)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        lease = uuid.uuid4()
        max_items = max(1, min(max_items, self.settings.max_batch))
        while True:
            signal = self.listener.work_signal()
            if gone():
                return Claim(str(lease), [])
            started, floor = self._floors.start(models)
            rows = await self._fetch_keeping_result(
                QUERIES["claim_items"],
                list(models),
                max_items,
                lease,
                self.settings.lease_seconds,
                worker.name,
                floor,
            )
            if rows:
                items = sorted((claimed_from_row(r) for r in rows), key=lambda i: i.id)
                self._floors.found(models, started, items[0].id)
                return await self._hand_over(str(lease), items, gone)
            left = deadline - loop.time()
            if left <= 0 or self.closing:
                return Claim(str(lease), [])
            items = await self._wait_for_work(
                signal, models, max_items, lease, worker, min(left, self.settings.backstop_interval)
            )
            if items:
                return await self._hand_over(str(lease), items, gone)

    async def _hand_over(
        self, lease: str, items: list[ClaimedItem], gone: Callable[[], bool]
    ) -> Claim:
        """The claim's answer; what a worker that hung up meanwhile got goes back."""
        if gone():
            await self.release(lease, [i.id for i in items])
            return Claim(lease, [])
        metrics.observe_claim(items[0].model, len(items))
        return Claim(lease, items)

    async def _wait_for_work(
        self,
        signal: asyncio.Event,
        models: Sequence[str],
        max_items: int,
        lease: uuid.UUID,
        worker: WorkerInfo,
        timeout: float,
    ) -> list[ClaimedItem]:
        """Wait for new work, offering this claim to the submits meanwhile: what a submit
        leased to it directly is returned; [] means look again."""
        offer = self._handoff.offer(models, max_items, lease, worker.name)
        announced = asyncio.ensure_future(signal.wait())
        either: list[asyncio.Future[Any]] = [announced, offer.items]
        try:
            await asyncio.wait(either, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not offer.taken:
                return []
            # A submit is storing inputs for this claim: its answer decides.
            items = await asyncio.shield(offer.items)
            offer.answering()
            return items
        except asyncio.CancelledError:
            if offer.taken:  # what is leased to it goes back once the insert is done
                offer.items.add_done_callback(self._release_orphaned(str(lease)))
            raise
        finally:
            announced.cancel()
            self._handoff.withdraw(offer)

    def _release_orphaned(self, lease: str) -> Callable[[asyncio.Future[list[ClaimedItem]]], None]:
        """Inputs leased to a claim that was cancelled meanwhile go back at once."""

        def release(fut: asyncio.Future[list[ClaimedItem]]) -> None:
            if fut.cancelled() or not fut.result():
                return
            ids = [i.id for i in fut.result()]
            self._in_background(self._release_logged(lease, ids), "release-orphaned")

        return release

    async def _release_logged(self, lease: str, ids: list[int]) -> None:
        try:
            await self.release(lease, ids)
        except Exception as exc:  # the lease expires on its own: nothing is lost
            log.warning("could not hand back orphaned inputs lease=%s error=%r", lease, exc)

    async def _fetch_keeping_result(self, query: str, *args: object) -> list[asyncpg.Record]:
        """Fetch, and keep the rows even if returning the connection to the pool fails (the
        database went down just after the statement committed): a claim that committed must
        reach its worker, or its inputs sit leased to nobody until the lease expires."""
        conn = await self.pool.acquire()
        try:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        except BaseException:
            with contextlib.suppress(*DATABASE_DOWN):
                await self.pool.release(conn)
            raise
        try:
            await self.pool.release(conn)
        except DATABASE_DOWN as exc:
            log.warning("connection lost after a claim committed error=%r", exc)
        return rows

    async def heartbeat(self, lease: str, worker: WorkerInfo) -> int:
        """Extend the lease; return how many inputs it still holds (0: lost)."""
        await self.touch_worker(worker)
        await self._handoff.stored(lease)
        rows = await self.pool.fetch(
            QUERIES["extend_lease"], uuid.UUID(lease), self.settings.lease_seconds
        )
        return len(rows)

    async def complete(
        self,
        lease: str,
        results: Sequence[tuple[int, bytes, int]],
        failures: Sequence[Failure] = (),
        model_revision: str | None = None,
    ) -> tuple[list[int], list[int]]:
        """Store results and failures under the lease; return the ids accepted for each.
        Items no longer held under the lease are left alone. Each statement is fenced on its
        own and commits alone (no BEGIN/COMMIT round trips on the hot path): results and
        failures of one batch need not land together.

        Inputs another server process handed this lease ahead of its insert may not be
        stored yet when their results arrive here: results refused for inputs that do not
        exist at all are tried again for up to UNSTORED_WAIT seconds."""
        await self._handoff.stored(lease)
        done, failed = await self._complete_once(lease, results, failures, model_revision)
        if len(done) + len(failed) == len(results) + len(failures):
            return done, failed  # all accepted: the usual case
        pause, deadline = UNSTORED_RETRY, time.monotonic() + UNSTORED_WAIT
        while True:
            accepted = set(done) | set(failed)
            results = [r for r in results if r[0] not in accepted]
            failures = [f for f in failures if f.id not in accepted]
            if not results and not failures:
                return done, failed
            refused = [r[0] for r in results] + [f.id for f in failures]
            unstored = set(await self.pool.fetchval(QUERIES["unstored_items"], refused))
            if not unstored or time.monotonic() + pause > deadline:
                return done, failed
            await asyncio.sleep(pause)
            pause = min(pause * 2, UNSTORED_WAIT / 4)
            results = [r for r in results if r[0] in unstored]
            failures = [f for f in failures if f.id in unstored]
            more_done, more_failed = await self._complete_once(
                lease, results, failures, model_revision
            )
            done, failed = done + more_done, failed + more_failed

    async def _complete_once(
        self,
        lease: str,
        results: Sequence[tuple[int, bytes, int]],
        failures: Sequence[Failure],
        model_revision: str | None,
    ) -> tuple[list[int], list[int]]:
        lease_id = uuid.UUID(lease)
        done: list[int] = []
        failed: list[int] = []
        # Tasks handed whole to this lease are answered now, from the vectors in hand;
        # the statement below stores them meanwhile.
        early = self._handed.finished(lease, results)
        if early:
            await self._answer_first(early)
            if not failures and sum(t.n_inputs for t in early.values()) == len(results):
                await self._store_behind()
        async with self.pool.acquire() as conn:
            if results:
                row = await conn.fetchrow(
                    QUERIES["complete_items"],
                    lease_id,
                    [r[0] for r in results],
                    [r[1] for r in results],
                    [r[2] for r in results],
                    model_revision,
                    self.settings.cache,
                )
                done = list(row["ids"])
                if done:
                    # Committed: wake this process's waiters now (with the tasks this batch
                    # finished, when all their vectors are in hand); the NOTIFY tells the
                    # other processes.
                    woken = [str(t) for t in row["finished_ids"]]
                    self.listener.announce_done(woken, self._in_hand.completed(row, results, early))
                    await self._note_revision(conn, row["model"], model_revision)
                    metrics.observe_completed(
                        row["model"], row["queue_waits"], row["computes"], row["totals"]
                    )
            if failures:
                row = await conn.fetchrow(
                    QUERIES["fail_items"],
                    lease_id,
                    [f.id for f in failures],
                    [f.error for f in failures],
                    [f.retry for f in failures],
                    self.settings.max_attempts,
                    [f.code for f in failures],
                )
                failed = list(row["ids"])
                self.listener.announce_done([str(t) for t in row["failed_tasks"]])
                if row["requeued"]:
                    self._floors.requeued()
                if failed:
                    metrics.count_outcome(row["model"], "failed", row["failed"])
                    metrics.count_outcome(row["model"], "requeued", row["requeued"])
        return done, failed

    async def _answer_first(self, early: dict[str, Task]) -> None:
        """Wake the waiters of `early` with their tasks, and send the completion statement
        only once they have written their answers (or ANSWER_FIRST_WAIT passed). Sent at
        once, the statement's work in PostgreSQL took a core from the answer on its way
        to the client: the answer reached an idle client 0.65 ms later (bench/HISTORY.md)."""
        loop = asyncio.get_running_loop()
        answering = {task_id: loop.create_future() for task_id in early}
        self._answering.update(answering)
        try:
            woken = self.listener.announce_done(list(early), early)
            if woken:
                await asyncio.wait([answering[t] for t in woken], timeout=ANSWER_FIRST_WAIT)
        finally:
            for task_id in answering:
                self._answering.pop(task_id, None)

    async def _store_behind(self) -> None:
        """Results whose every task was answered already wait to be stored until the next
        request's insert has run, at most STORE_BEHIND_WAIT. Stored at once, the
        completion statement ran just as the answered client's next request arrived and
        took a core from that request's path; after that insert it runs while the worker
        computes (idle p50 over a direct call 1.0 ms lower on average, bench/README).
        Nothing waits for it meanwhile: the tasks' clients have their vectors, and if it
        never runs the lease expires and they are computed again."""
        waiting = self._next_insert
        if waiting is None or waiting.done():
            waiting = self._next_insert = asyncio.get_running_loop().create_future()
        await asyncio.wait([waiting], timeout=STORE_BEHIND_WAIT)

    def _answering_now(self, task: Task) -> Task:
        """A waiter got its finished task from a completion: it writes its answer in this
        same turn of the loop, so the completion statement waiting for it may go next."""
        fut = self._answering.get(task.id)
        if fut is not None and not fut.done():
            fut.set_result(None)
        return task

    async def _note_revision(
        self, conn: asyncpg.Connection, model: str, revision: str | None
    ) -> None:
        """Remember the revision a model is computed with (once per change per process)."""
        if self._revisions.get(model, "?") != revision:
            await conn.execute(QUERIES["set_model_revision"], model, revision)
            self._revisions[model] = revision

    async def release(self, lease: str, ids: Sequence[int]) -> list[int]:
        await self._handoff.stored(lease)
        self._handed.forget(lease)
        row = await self.pool.fetchrow(QUERIES["release_items"], uuid.UUID(lease), list(ids))
        if row["ids"]:
            self._floors.requeued()
        metrics.count_outcome("*", "released", len(row["ids"]))
        return list(row["ids"])

    async def live_models(self) -> list[str]:
        rows = await self.pool.fetch(QUERIES["live_models"], self.settings_worker_alive)
        models = [r["model"] for r in rows]
        self._served = (frozenset(models), time.monotonic())
        return models

    async def is_served(self, model: str) -> bool:
        """Does a live worker serve this model? Cached briefly: requests ask it often."""
        served, checked = self._served
        if time.monotonic() - checked > SERVED_CACHE_SECONDS:
            await self.live_models()
            served, _ = self._served
        return model in served

    @property
    def settings_worker_alive(self) -> float:
        return max(self.settings.lease_seconds, self.settings.claim_wait * 2)

    # -- maintenance -----------------------------------------------------------------------

    async def maintain(self) -> dict[str, int]:
        """One bounded pass of lease expiry and retention, by one server at a time."""
        stats = {"requeued": 0, "failed": 0, "pruned": 0}
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(QUERIES["try_maintenance_lock"]):
                return stats
            row = await conn.fetchrow(
                QUERIES["expire_leases"], MAINTENANCE_BATCH, self.settings.max_attempts
            )
            stats["requeued"], stats["failed"] = row["requeued"], row["failed"]
            expired_tasks = [str(t) for t in row["failed_tasks"]]
            pruned = await conn.execute(
                QUERIES["prune_finished"], self.settings.result_ttl, MAINTENANCE_BATCH
            )
            stats["pruned"] = int(pruned.split()[-1])
            await conn.execute(QUERIES["prune_cache"], self.settings.cache_ttl, MAINTENANCE_BATCH)
        if expired_tasks:  # committed: their waiters here need not wait for the NOTIFY
            self.listener.announce_done(expired_tasks)
        if stats["requeued"]:
            self._floors.requeued()
            metrics.count_outcome("*", "requeued", stats["requeued"])
        if stats["failed"]:
            metrics.count_outcome("*", "expired", stats["failed"])
        if stats["requeued"] or stats["failed"] or stats["pruned"]:
            log.info(
                "maintenance requeued=%d failed=%d pruned=%d",
                stats["requeued"],
                stats["failed"],
                stats["pruned"],
            )
        return stats


def _refused_value(exc: Exception) -> bool:
    """An error PostgreSQL (or asyncpg, encoding the arguments) raises for a value one
    request brought, not for the database being unreachable."""
    return isinstance(exc, asyncpg.PostgresError | asyncpg.DataError) and not isinstance(
        exc, DATABASE_DOWN
    )
