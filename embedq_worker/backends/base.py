"""The interface every compute backend implements, and the errors the runner understands.

Vectors travel as little-endian float32 bytes from the backend to the server's stored row
and on to the client, so nothing re-formats floats on the hot path.
"""

from __future__ import annotations

import array
import sys
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class EmbedResult:
    """What one backend call produced for a batch, in input order."""

    vectors: list[bytes]  # one little-endian float32 vector per input
    tokens: list[int]  # tokens per input (estimated split when the backend reports a total)
    model_revision: str | None = None  # digest or revision of the model, when the backend tells


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model this worker serves, and which backend computes it."""

    name: str  # the model name clients ask for
    backend: str  # "ollama", "openai" or "local"


class BackendError(Exception):
    """The backend could not compute the batch; retrying later may help (down, busy, slow)."""

    retryable: bool = True


class BackendUnavailable(BackendError):
    """The backend is down, busy (503) or timed out: back off and retry the same batch."""


class ModelNotFound(BackendError):
    """The backend does not have this model: fail the tasks clearly instead of looping."""

    retryable = False


class InputRejected(BackendError):
    """The backend refused the batch because of its inputs (for example one over the context
    length). The runner splits the batch to find the bad input and fails only that one."""

    retryable = False


@dataclass
class BackendInfo:
    """Facts a backend reports at start-up, for logs and worker registration."""

    name: str
    endpoint: str
    models: dict[str, str | None] = field(default_factory=dict)  # model -> revision/digest


class Backend(Protocol):
    """A compute backend. One instance serves one or more models."""

    name: str
    concurrency: int  # batches it can usefully compute at once (e.g. one per Ollama instance)

    async def start(self, models: list[str]) -> BackendInfo:
        """Open connections and check that every model exists (raise ModelNotFound if not)."""
        ...

    async def embed(self, model: str, texts: list[str], dimensions: int | None) -> EmbedResult:
        """Embed texts with one call to the backend (the runner already batched them)."""
        ...

    async def close(self) -> None: ...


def floats_to_bytes(values: list[float]) -> bytes:
    """Pack a vector as little-endian float32."""
    packed = array.array("f", values)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def split_tokens(total: int, texts: list[str]) -> list[int]:
    """Share a call's total token count across its inputs in proportion to their length,
    so that per-request usage adds up exactly when a batch mixes several requests."""
    if not texts:
        return []
    weights = [max(len(t), 1) for t in texts]
    scale = sum(weights)
    shares = [total * w // scale for w in weights]
    for i in range(total - sum(shares)):
        shares[i % len(shares)] += 1
    return shares
