"""Group commit: calls that arrive together share one statement.

Under load every request costs PostgreSQL a statement and a commit of its own, and that,
not the work inside, is most of its price. A `Grouped` runs the first call at once (an idle
server adds nothing), and lets the calls that arrive while a statement is in flight wait
for the next one, where they all go together: the busier the server, the bigger the groups.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

MAX_GROUP = 256  # calls in one statement at most


class Grouped(Generic[In, Out]):
    """`await grouped(x)` returns `run([..., x, ...])`'s answer for x. `run` gets the calls
    of one group in arrival order and returns one answer each, in the same order; if it
    raises, every call of the group raises the same error, unless `isolate(error)` says
    the error may belong to one call (a value the database refuses): then the group is
    run again a call at a time, so only the bad call fails. At most `in_flight`
    statements run at once."""

    def __init__(
        self,
        run: Callable[[list[In]], Awaitable[Sequence[Out]]],
        name: str,
        *,
        in_flight: int = 1,
        max_group: int = MAX_GROUP,
        isolate: Callable[[Exception], bool] = lambda exc: False,
    ) -> None:
        self._run = run
        self._name = name
        self._in_flight = max(1, in_flight)
        self._max_group = max(1, max_group)
        self._isolate = isolate
        self._waiting: list[tuple[In, asyncio.Future[Out]]] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._running = 0  # flushers that have not returned (counted down synchronously)

    async def __call__(self, item: In) -> Out:
        fut: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._waiting.append((item, fut))
        if self._running < self._in_flight:
            self._running += 1
            flusher = asyncio.create_task(self._flush(), name=self._name)
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)
        # Shielded: a caller that gives up (its client hung up) must not cancel the
        # statement its neighbours share; it only stops waiting for its answer.
        return await asyncio.shield(fut)

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(0)  # the calls made in this same turn of the loop join in
            await self._flush_waiting()
        finally:
            # In the same step as the last look at _waiting: a call arriving after it sees
            # this flusher gone and starts another, so no call is left behind.
            self._running -= 1

    async def _flush_waiting(self) -> None:
        while self._waiting:
            group = self._waiting[: self._max_group]
            del self._waiting[: self._max_group]
            await self._run_group(group)

    async def _run_group(self, group: list[tuple[In, asyncio.Future[Out]]]) -> None:
        try:
            try:
                answers = await self._run([item for item, _ in group])
            except Exception as exc:
                if len(group) > 1 and self._isolate(exc):
                    for one in group:  # once more, a call at a time: the bad one fails alone
                        await self._run_group([one])
                    return
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(exc)
                return
        except BaseException:  # the flusher itself was cancelled (shutdown)
            for _, fut in group:
                fut.cancel()
            raise
        for (_, fut), answer in zip(group, answers, strict=True):
            if not fut.done():
                fut.set_result(answer)

    async def drain(self) -> None:
        """Wait for the statements in flight (shutdown)."""
        if self._flushers:
            await asyncio.gather(*self._flushers, return_exceptions=True)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark the error of an answer nobody waits for any more (its caller gave up) as seen."""
    if not fut.cancelled():
        fut.exception()
