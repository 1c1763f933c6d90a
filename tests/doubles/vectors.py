"""The deterministic fake embeddings every test double serves, so a test can check any vector
that went through the queue against `expected_bytes(model, text)` without a real model.

A vector is seeded from sha256(model, text), its components are int16 draws from that seed,
cut to `dimensions` when asked and then L2-normalised and rounded to float32 (so the floats
of `expected_vector` are exactly the values the float32 bytes hold). In JSON each value is
the shortest decimal that reads back as the same float32, as Ollama (Go, `[]float32`) and
OpenAI write them.
"""

from __future__ import annotations

import hashlib
import math
import random
from functools import lru_cache

import numpy as np
import orjson

DEFAULT_DIM = 768  # nomic-embed-text's size
_CACHE_SIZE = 16_384  # vectors kept (about 3 KiB each at 768 dims)


def canonical_model(model: str) -> str:
    """Ollama treats `name` and `name:latest` as one model, so they must embed alike."""
    return model.removesuffix(":latest")


@lru_cache(maxsize=_CACHE_SIZE)
def expected_bytes(
    model: str, text: str, dimensions: int | None = None, dim: int = DEFAULT_DIM
) -> bytes:
    """The little-endian float32 bytes of the fake vector; `dimensions` >= `dim` means all."""
    size = dim if dimensions is None else min(dimensions, dim)
    if size < 1:
        raise ValueError(f"dimensions must be positive, got {size}")
    seed = hashlib.sha256(f"{canonical_model(model)}\0{text}".encode()).digest()
    raw = np.frombuffer(random.Random(seed).randbytes(2 * size), dtype=np.int16)
    scale = 1.0 / (math.hypot(*raw.tolist()) or 1.0)
    return (raw * scale).astype("<f4").tobytes()  # each value rounded to the nearest float32


def expected_vector(
    model: str, text: str, dimensions: int | None = None, dim: int = DEFAULT_DIM
) -> list[float]:
    """The fake vector as floats: unit length, `dimensions` long when given."""
    values: list[float] = np.frombuffer(
        expected_bytes(model, text, dimensions, dim), dtype="<f4"
    ).tolist()
    return values


@lru_cache(maxsize=4096)
def expected_json(
    model: str, text: str, dimensions: int | None = None, dim: int = DEFAULT_DIM
) -> str:
    """The fake vector as a JSON array of float32 values, each in its shortest form (about
    11 characters where a float64's took 20: half the bytes, as Ollama sends). The doubles
    stand in for a GPU on another machine, so their own Python work should cost as little
    as a real server's JSON does (a third of what formatting float64 values took)."""
    values = np.frombuffer(expected_bytes(model, text, dimensions, dim), dtype="<f4")
    return orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def fake_token_count(text: str) -> int:
    """Tokens the doubles report for one input: one per 4 characters plus one special token,
    a cheap stand-in for a tokenizer that still grows with the text."""
    return len(text) // 4 + 1
