"""parse_request and its helpers, without a server: what a valid body becomes, and that any
JSON at all either parses into something PostgreSQL can store or raises a 400 naming a field.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedq_server.errors import ApiError
from embedq_server.openai_api import (
    MAX_DIMENSIONS,
    MAX_MODEL_CHARS,
    as_int,
    check_text,
    json_type,
    parse_inputs,
    parse_request,
)
from embedq_server.settings import Settings

SETTINGS = Settings(max_inputs=8, max_input_chars=50, max_total_chars=120, max_wait=30)
FIELDS = {None, "input", "model", "encoding_format", "dimensions", "user", "wait_seconds"}


def fails(body: Any, settings: Settings = SETTINGS) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_request(body, settings)
    return info.value


def test_defaults() -> None:
    req = parse_request({"input": "hello"}, SETTINGS)
    assert req.inputs == ["hello"]
    assert req.model == SETTINGS.default_model
    assert req.encoding_format == "float"
    assert req.dimensions == 0
    assert req.wait_seconds == SETTINGS.default_wait and not req.explicit_wait


def test_nulls_are_defaults() -> None:
    body = {
        "input": "a",
        "model": None,
        "encoding_format": None,
        "dimensions": None,
        "user": None,
        "wait_seconds": None,
    }
    req = parse_request(body, SETTINGS)
    assert (req.model, req.encoding_format, req.dimensions) == (SETTINGS.default_model, "float", 0)
    assert not req.explicit_wait


def test_every_field() -> None:
    body = {
        "input": ["a", "b"],
        "model": "  m  ",
        "encoding_format": "base64",
        "dimensions": 256,
        "user": "u-1",
        "wait_seconds": 0,
    }
    req = parse_request(body, SETTINGS)
    assert req.inputs == ["a", "b"]
    assert req.model == "m"  # surrounding spaces are not part of a model name
    assert req.encoding_format == "base64"
    assert req.dimensions == 256
    assert req.wait_seconds == 0.0 and req.explicit_wait


def test_token_ids_decode_to_the_text_langchain_tokenized() -> None:
    assert parse_inputs([[15339, 1917], [5686, 4733]], SETTINGS) == ["hello world", "second doc"]
    assert parse_inputs([15339, 1917], SETTINGS) == ["hello world"]  # one input


def test_integral_floats_are_integers_as_in_json() -> None:
    req = parse_request({"input": [[15339.0]], "dimensions": 8.0, "wait_seconds": 2.0}, SETTINGS)
    assert req.inputs == ["hello"] and req.dimensions == 8 and req.wait_seconds == 2.0
    assert isinstance(req.dimensions, int)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3),
        (3.0, 3),
        (-2.0, -2),
        (True, None),
        (False, None),
        (3.5, None),
        ("3", None),
        (None, None),
        (float("inf"), None),
        (float("nan"), None),
        (10**30, 10**30),
    ],
)
def test_as_int(value: Any, expected: int | None) -> None:
    assert as_int(value) == expected


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (None, "null"),
        (True, "a boolean"),
        (1, "a number"),
        (1.5, "a number"),
        ("", "a string"),
        ([], "an array"),
        ({}, "an object"),
    ],
)
def test_json_type(value: Any, name: str) -> None:
    assert json_type(value) == name


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a\x00", "NUL character"),
        ("\ud800", "lone surrogate ('\\ud800' at character 0)"),
        ("ok\udfff", "at character 2"),
    ],
)
def test_check_text_refuses_what_postgresql_cannot_store(text: str, words: str) -> None:
    with pytest.raises(ApiError) as info:
        check_text(text, "input[0]", "input")
    assert info.value.status == 400 and info.value.param == "input"
    assert info.value.code == "invalid_text"
    assert words in info.value.message and info.value.message.startswith("input[0] ")


@pytest.mark.parametrize("text", ["plain", "\U0001f600", "tab\tand\nnewline", "\x01\x7f", "\ufffd"])
def test_check_text_allows_any_real_unicode(text: str) -> None:
    check_text(text, "input[0]", "input")


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": ["x"] * 9}, "input", "too_many_inputs"),
        ({"input": "x" * 51}, "input", "input_too_long"),
        ({"input": ["x" * 50, "y" * 50, "z" * 21]}, "input", "request_too_long"),
        ({"input": "a", "model": "m" * (MAX_MODEL_CHARS + 1)}, "model", None),
        ({"input": "a", "dimensions": MAX_DIMENSIONS + 1}, "dimensions", None),
        ({"input": "a", "wait_seconds": 31}, "wait_seconds", None),
        ({"input": "a\x00"}, "input", "invalid_text"),
    ],
)
def test_limits_and_codes(body: dict[str, Any], param: str, code: str | None) -> None:
    error = fails(body)
    assert (error.status, error.param, error.code) == (400, param, code)


def test_the_limits_are_inclusive() -> None:
    body = {
        "input": ["x" * 50, "y" * 50, "z" * 20],
        "model": "m" * MAX_MODEL_CHARS,
        "dimensions": MAX_DIMENSIONS,
        "wait_seconds": 30,
    }
    assert len(parse_request(body, SETTINGS).inputs) == 3


def test_a_default_wait_beyond_max_wait_is_not_the_callers_fault() -> None:
    generous = Settings(default_wait=60, max_wait=30)
    assert parse_request({"input": "a"}, generous).wait_seconds == 60


# -- any JSON at all ----------------------------------------------------------------------

# Any code point, NUL and lone surrogates often: json.loads makes those of "\ud800" escapes.
any_char = st.characters(exclude_categories=()) | st.sampled_from(["\x00", "\ud800", "\udfff"])
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(any_char),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(any_char, max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
# Texts from a few telling characters (NUL, a lone surrogate, an astral one, spaces) or
# from all of Unicode.
texts = st.text(
    st.sampled_from(["a", " ", "\x00", "\ud800", "\U0001f600", "\u00e9"]), min_size=1, max_size=6
) | st.text(any_char, min_size=1, max_size=20)
token_ids = st.integers(min_value=-5, max_value=100_300)
inputs = st.one_of(
    json_values,
    texts,
    st.lists(texts, min_size=1, max_size=9),
    st.lists(token_ids, min_size=1, max_size=9),
    st.lists(st.lists(token_ids, min_size=1, max_size=5), min_size=1, max_size=9),
)


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's valid values two times in three, anything at all otherwise."""
    return st.one_of(valid, valid, json_values)


objects = st.fixed_dictionaries(
    {"input": inputs},
    optional={
        "model": mostly(st.sampled_from(["m", " m ", "nomic-embed-text"]) | texts),
        "encoding_format": mostly(st.sampled_from(["float", "base64", None])),
        "dimensions": mostly(st.integers(-3, 70_000) | st.none()),
        "user": mostly(st.text(any_char) | st.none()),
        "wait_seconds": mostly(st.integers(-3, 40) | st.none()),
    },
)
bodies = st.one_of(objects, objects, json_values)  # a third of the time: anything at all


@settings(max_examples=1000, deadline=None, database=None)
@given(bodies)
def test_any_json_parses_to_storable_values_or_a_400_naming_a_field(body: Any) -> None:
    try:
        req = parse_request(body, SETTINGS)
    except ApiError as exc:
        assert exc.status == 400
        assert exc.param in FIELDS
        assert exc.message
        return
    assert 1 <= len(req.inputs) <= SETTINGS.max_inputs
    assert sum(map(len, req.inputs)) <= SETTINGS.max_total_chars
    for text in req.inputs:
        assert 0 < len(text) <= SETTINGS.max_input_chars
        assert "\x00" not in text
        text.encode("utf-8")  # no lone surrogates
    assert req.model and len(req.model) <= MAX_MODEL_CHARS and "\x00" not in req.model
    req.model.encode("utf-8")
    assert req.encoding_format in ("float", "base64")
    assert isinstance(req.dimensions, int) and 0 <= req.dimensions <= MAX_DIMENSIONS
    assert 0 <= req.wait_seconds <= max(SETTINGS.max_wait, SETTINGS.default_wait)
