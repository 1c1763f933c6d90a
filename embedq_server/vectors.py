"""Vectors are stored and moved as little-endian float32 bytes; floats only at the edge."""

from __future__ import annotations

import array
import sys


def to_floats(data: bytes) -> list[float]:
    values = array.array("f")
    values.frombytes(data)
    if sys.byteorder != "little":
        values.byteswap()
    return values.tolist()
