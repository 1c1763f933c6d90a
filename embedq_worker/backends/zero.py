"""A zero-cost backend for benchmarks: every input gets the same precomputed float32 vector,
with no HTTP call and no compute, so what a benchmark measures is the queue's own ceiling
(server, PostgreSQL, worker protocol) and nothing else.

Serve it with `BACKEND=zero` or `EMBEDDING_MODEL=zero:<name>`; `ZERO_DIM` sets the vector
size (768 by default, nomic-embed-text's). Never for production: the vectors mean nothing.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping

from .base import BackendInfo, EmbedResult, floats_to_bytes

DEFAULT_DIM = 768  # nomic-embed-text's size, so responses weigh what real ones weigh
REVISION = "zero"


def unit_vector(size: int) -> bytes:
    """A fixed unit-length vector of `size` pseudo-random components, as little-endian
    float32 bytes. Random like a real embedding, so PostgreSQL cannot compress it and
    stores what it stores for real vectors (equal components would shrink to nothing)."""
    rng = random.Random(f"embedq-zero-{size}")
    values = [rng.gauss(0.0, 1.0) for _ in range(size)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return floats_to_bytes([v / norm for v in values])


class ZeroBackend:
    """Answers from precomputed bytes: one shared bytes object per vector size, so a batch
    costs a list multiplication. Token counts are the doubles' cheap estimate."""

    name: str = "zero"
    concurrency: int = 1  # computing takes no time: one slot keeps the claim loop the limit

    def __init__(self, dim: int = DEFAULT_DIM) -> None:
        if dim < 1:
            raise ValueError(f"ZERO_DIM must be >= 1, got {dim}")
        self.dim = dim
        self._vectors: dict[int, bytes] = {dim: unit_vector(dim)}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ZeroBackend:
        env = os.environ if env is None else env
        return cls(int(env.get("ZERO_DIM") or DEFAULT_DIM))

    async def start(self, models: list[str]) -> BackendInfo:
        return BackendInfo(
            name=self.name,
            endpoint=f"in-process dim={self.dim}",
            models=dict.fromkeys(models, REVISION),
        )

    async def embed(self, model: str, texts: list[str], dimensions: int | None) -> EmbedResult:
        size = min(dimensions, self.dim) if dimensions else self.dim
        vector = self._vectors.get(size)
        if vector is None:
            vector = self._vectors[size] = unit_vector(size)
        return EmbedResult(
            vectors=[vector] * len(texts),
            tokens=[len(text) // 4 + 1 for text in texts],
            model_revision=REVISION,
        )

    async def close(self) -> None:
        return None
