"""Claims waiting in this process, and the submits that hand them work directly.

A claim that found nothing pending waits here as an offer. The next submit of one of its
models stores its inputs leased to that claim, as the claim statement would have, saving
that statement and a wake-up. A request that is the only one of its group matched to a
claim (an idle server's case) is handed over before that insert when a read-only probe
allows it (no identical earlier request to attach to, no input in the result cache),
under ids taken from the item sequence, and the insert runs while the worker computes:
it took the insert (1.2-1.6 ms after the pause of an idle request) off that request's
path. Results, hand-backs and heartbeats for such a lease wait for its insert
(`stored`); results that reach another server process first are tried again there
(Queue.complete).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from .handed import HandedTasks
from .records import ClaimedItem, untouched_task
from .sql import QUERIES

CLAIM_ANSWER_WAIT = 0.005  # seconds an insert waits for the claims handed ahead to answer


@dataclass(frozen=True, slots=True)
class Submission:
    """One request on its way into the next group insert."""

    task_id: uuid.UUID
    owner: str
    fingerprint: bytes
    model: str
    dimensions: int
    inputs: Sequence[str]
    scope: str | None  # result-cache scope; None: the cache is off


@dataclass(eq=False)
class Offer:
    """A claim waiting for work in this process."""

    models: frozenset[str]
    max_items: int
    lease: uuid.UUID
    worker: str
    items: asyncio.Future[list[ClaimedItem]]  # what a submit leased to it ([]: nothing)
    taken: bool = False  # a submit is storing inputs for it
    key: tuple[str, int] | None = None  # the (model, dimensions) it was given
    given: int = 0  # inputs given so far
    answered: asyncio.Future[None] | None = None  # handed ahead: set as the claim answers

    def answering(self) -> None:
        """The claim has its items and answers in this turn of the loop: the insert of
        inputs handed to it ahead may go now."""
        if self.answered is not None and not self.answered.done():
            self.answered.set_result(None)


class HandOff:
    """The offers waiting in this process, and the leases handed inputs ahead of their
    insert (until it has run)."""

    def __init__(self, pool: asyncpg.Pool, handed: HandedTasks) -> None:
        self._pool = pool
        self._handed = handed
        self._waiting: list[Offer] = []  # in arrival order
        self._inserting: dict[str, asyncio.Future[None]] = {}  # lease -> its insert ran

    def __len__(self) -> int:
        return len(self._waiting)

    def offer(self, models: Sequence[str], max_items: int, lease: uuid.UUID, worker: str) -> Offer:
        loop = asyncio.get_running_loop()
        offer = Offer(frozenset(models), max_items, lease, worker, loop.create_future())
        self._waiting.append(offer)
        return offer

    def withdraw(self, offer: Offer) -> None:
        if not offer.taken:
            self._waiting.remove(offer)

    def match(self, group: list[Submission]) -> list[Offer | None]:
        """Give each request to the first waiting claim of its model that has room for all
        its inputs (one model and one dimensions per claim); None: it goes pending."""
        matched: list[Offer | None] = []
        for sub in group:
            found = None
            for offer in self._waiting:
                fits = offer.given + len(sub.inputs) <= offer.max_items
                same = offer.key is None or offer.key == (sub.model, sub.dimensions)
                if sub.model in offer.models and fits and same:
                    found = offer
                    break
            if found is not None:
                found.taken = True
                found.key = (sub.model, sub.dimensions)
                found.given += len(sub.inputs)
            matched.append(found)
        if any(m is not None for m in matched):
            self._waiting = [o for o in self._waiting if not o.taken]
        return matched

    async def ahead(
        self, group: list[Submission], offers: list[Offer | None]
    ) -> dict[int, list[int]]:
        """Hand a request to the claim it was matched with before the insert, when it is
        the one request of its group matched (an idle server's case: under load the
        probe would be one more statement per group, for latency nobody waits on) and the
        probe allows it; the others are handed after the insert (`give`). Returns, by
        position in `group`, the ids a request handed ahead must be stored under, once
        its claim has answered (at most CLAIM_ANSWER_WAIT): an insert sent first delayed
        the claim's answer and competed with the worker for the CPU as it started its
        backend call."""
        matched = [k for k, offer in enumerate(offers) if offer is not None]
        if len(matched) != 1:
            return {}
        k = matched[0]
        sub, offer = group[k], offers[k]
        assert offer is not None
        row = await self._pool.fetchrow(
            QUERIES["probe_request"],
            sub.owner,
            sub.fingerprint,
            sub.model,
            sub.dimensions,
            sub.scope,
            list(sub.inputs),
        )
        if row["blocked"]:
            return {}
        ids: list[int] = list(row["ids"])
        loop = asyncio.get_running_loop()
        self._inserting[str(offer.lease)] = loop.create_future()
        offer.answered = loop.create_future()
        offer.items.set_result(
            [
                ClaimedItem(item_id, str(sub.task_id), text, sub.model, sub.dimensions, 1)
                for item_id, text in zip(ids, sub.inputs, strict=True)
            ]
        )
        await asyncio.wait([offer.answered], timeout=CLAIM_ANSWER_WAIT)
        return {k: ids}

    def give(
        self, group: list[Submission], offers: list[Offer | None], rows: list[asyncpg.Record]
    ) -> list[asyncpg.Record]:
        """After the insert: each claim gets what was leased to it (unless handed ahead
        already), and tasks handed whole are noted for early answers. Returns the rows in
        `group`'s order."""
        by_request = {row["req_id"]: row for row in rows}
        given: dict[Offer, list[ClaimedItem]] = {o: [] for o in offers if o is not None}
        for sub, match in zip(group, offers, strict=True):
            row = by_request[sub.task_id]
            if match is None or not row["leased_ids"]:
                continue
            given[match] += [
                ClaimedItem(
                    item_id, str(sub.task_id), sub.inputs[idx], sub.model, sub.dimensions, 1
                )
                for item_id, idx in zip(row["leased_ids"], row["leased_idx"], strict=True)
            ]
            if len(row["leased_ids"]) == len(sub.inputs):
                task = untouched_task(
                    str(sub.task_id),
                    sub.owner,
                    sub.model,
                    sub.dimensions,
                    len(sub.inputs),
                    row["created_at"],
                )
                self._handed.add(str(match.lease), task, row["leased_ids"], row["leased_idx"])
        for offer, items in given.items():
            if not offer.items.done():  # else handed ahead, with these very items
                offer.items.set_result(sorted(items, key=lambda i: i.id))
        return [by_request[s.task_id] for s in group]

    def failed(self, offers: list[Offer | None]) -> None:
        """The insert failed: claims not handed anything yet look again themselves."""
        for taken in {o for o in offers if o is not None and not o.items.done()}:
            taken.items.set_result([])

    def settled(self, offers: list[Offer | None], ahead: dict[int, list[int]]) -> None:
        """The insert of the requests handed ahead has run (or failed)."""
        for k in ahead:
            offer = offers[k]
            stored = self._inserting.pop(str(offer.lease), None) if offer else None
            if stored is not None and not stored.done():
                stored.set_result(None)

    async def stored(self, lease: str) -> None:
        """Inputs handed to this lease ahead of their insert: wait until it has run (its
        results, a hand-back or a heartbeat must find them stored)."""
        inserting = self._inserting.get(lease)
        if inserting is not None:
            await asyncio.shield(inserting)
