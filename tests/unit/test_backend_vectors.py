"""The fake vectors every double serves: stable, unit length, float32-exact and fast."""

from __future__ import annotations

import math
import struct

import pytest

from tests.doubles.ollama import parse_keep_alive
from tests.doubles.vectors import (
    expected_bytes,
    expected_json,
    expected_vector,
    fake_token_count,
)


def test_vectors_are_deterministic_unit_length_and_differ_by_text_and_model() -> None:
    first = expected_vector("nomic-embed-text", "hello")
    assert first == expected_vector("nomic-embed-text", "hello")
    assert len(first) == 768
    assert math.isclose(math.hypot(*first), 1.0, abs_tol=1e-6)
    assert first != expected_vector("nomic-embed-text", "hello!")
    assert first != expected_vector("all-minilm", "hello")
    assert first == expected_vector("nomic-embed-text:latest", "hello")


def test_the_first_vector_stays_the_same_across_releases() -> None:
    """Other suites compare against these vectors: changing them is a breaking change."""
    assert (
        expected_bytes("nomic-embed-text", "hi", None, 4).hex()
        == "b20b45bfe2ba073ec1dce83efd19dbbe"
    )


def test_bytes_are_little_endian_float32_of_the_floats() -> None:
    vector = expected_vector("m", "text", dim=16)
    assert expected_bytes("m", "text", dim=16) == struct.pack("<16f", *vector)
    # The floats are exactly float32 values, so a round trip through bytes is lossless.
    assert list(struct.unpack("<16f", struct.pack("<16f", *vector))) == vector


def test_dimensions_cut_the_vector_and_normalise_it_again() -> None:
    full = expected_vector("m", "text")
    cut = expected_vector("m", "text", 64)
    assert len(cut) == 64
    assert math.isclose(math.hypot(*cut), 1.0, abs_tol=1e-6)
    scale = math.hypot(*full[:64])
    assert cut == pytest.approx([x / scale for x in full[:64]], abs=1e-6)
    assert expected_vector("m", "text", 10_000) == full
    with pytest.raises(ValueError):
        expected_bytes("m", "text", 0)


def test_json_form_gives_back_the_same_float32() -> None:
    values = [float(x) for x in expected_json("m", "text", None, 32).strip("[]").split(",")]
    assert struct.pack("<32f", *values) == expected_bytes("m", "text", None, 32)


def test_json_writes_each_value_as_its_shortest_float32_form_as_ollama_does() -> None:
    """Go writes a []float32 with the fewest digits that read back as the same float32 (at
    most 9 significant ones); a float64's repr of the same value takes about 17."""
    tokens = expected_json("nomic-embed-text", "text").strip("[]").split(",")
    assert len(tokens) == 768
    for token in tokens:
        mantissa = token.lstrip("-").split("e")[0].replace(".", "").lstrip("0")
        assert 1 <= len(mantissa) <= 9, token
    as_float32 = struct.pack("<768f", *map(float, tokens))
    assert as_float32 == expected_bytes("nomic-embed-text", "text")


def test_token_counts_grow_with_the_text() -> None:
    assert fake_token_count("") == 1
    assert fake_token_count("abcd" * 10) == 11


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, 300.0), ("30m", 1800.0), ("1h30m", 5400.0), ("90s", 90.0), (0, 0.0), ("0", 0.0)],
)
def test_keep_alive_reads_go_durations(value: object, seconds: float) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", [-1, "-1", "-5m"])
def test_negative_keep_alive_is_forever(value: object) -> None:
    assert parse_keep_alive(value) is None


@pytest.mark.parametrize("value", ["soon", "5 minutes", True, [1]])
def test_bad_keep_alive_is_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_keep_alive(value)
