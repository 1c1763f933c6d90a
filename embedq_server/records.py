"""What the queue hands out: tasks with their results, claimed inputs, worker reports, as
plain frozen dataclasses, and how they are built from the rows PostgreSQL returns."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import asyncpg


@dataclass(frozen=True, slots=True)
class ItemResult:
    index: int
    vector: bytes
    tokens: int


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    owner: str
    model: str
    dimensions: int
    n_inputs: int
    remaining: int
    failed: int
    error: str | None
    error_code: str | None
    created_at: datetime
    finished_at: datetime | None
    results: tuple[ItemResult, ...] | None = None  # in input order, once completed and read

    @property
    def done(self) -> bool:
        """Nothing more will change the answer: all inputs ended, or one failed."""
        return self.remaining <= 0 or self.failed > 0

    @property
    def status(self) -> str:
        if self.failed > 0:
            return "failed"
        if self.remaining <= 0:
            return "completed"
        return "pending" if self.remaining == self.n_inputs else "processing"


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    id: int
    task_id: str
    input: str
    model: str
    dimensions: int
    attempts: int


@dataclass(frozen=True, slots=True)
class Claim:
    lease: str
    items: list[ClaimedItem]


@dataclass(frozen=True, slots=True)
class Failure:
    id: int
    error: str
    code: str
    retry: bool


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    name: str
    version: str | None = None
    models: tuple[str, ...] = ()
    backend: str | None = None
    host: str | None = None


def fingerprint(owner: str, model: str, dimensions: int, inputs: Sequence[str]) -> bytes:
    """Identifies an identical request by the same client, so a retry attaches to it."""
    h = hashlib.sha256()
    for part in (owner, model, str(dimensions), str(len(inputs))):
        h.update(part.encode())
        h.update(b"\0")
    for text in inputs:
        h.update(len(text).to_bytes(8, "little"))
        h.update(text.encode("utf-8", "surrogatepass"))
    return h.digest()


def untouched_task(
    task_id: str, owner: str, model: str, dimensions: int, n_inputs: int, created_at: datetime
) -> Task:
    """A task as stored before any of its inputs ended."""
    return Task(
        id=task_id,
        owner=owner,
        model=model,
        dimensions=dimensions,
        n_inputs=n_inputs,
        remaining=n_inputs,
        failed=0,
        error=None,
        error_code=None,
        created_at=created_at,
        finished_at=None,
    )


def completed_task(
    task: Task, results: tuple[ItemResult, ...], finished_at: datetime | None
) -> Task:
    """`task` (as stored, nothing failed) with every input completed."""
    return replace(
        task,
        remaining=0,
        failed=0,
        error=None,
        error_code=None,
        finished_at=finished_at,
        results=results,
    )


def task_with_results(row: asyncpg.Record) -> Task:
    results = None
    if row["vectors"] is not None:
        pairs = zip(row["vectors"], row["tokens"], strict=True)
        results = tuple(ItemResult(i, v, t) for i, (v, t) in enumerate(pairs))
    return task_from_row(row, results)


def task_from_row(row: asyncpg.Record, results: tuple[ItemResult, ...] | None = None) -> Task:
    return Task(
        id=str(row["id"]),
        owner=row["owner"],
        model=row["model"],
        dimensions=row["dimensions"],
        n_inputs=row["n_inputs"],
        remaining=row["remaining"],
        failed=row["failed"],
        error=row["error"],
        error_code=row["error_code"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        results=results,
    )


def claimed_from_row(row: asyncpg.Record) -> ClaimedItem:
    return ClaimedItem(
        id=row["id"],
        task_id=str(row["task_id"]),
        input=row["input"],
        model=row["model"],
        dimensions=row["dimensions"],
        attempts=row["attempts"],
    )
