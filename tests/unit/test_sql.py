"""queries.sql holds every statement: each name the code asks for exists, and each block is
used (a dead statement is a statement nobody maintains)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from embedq_server.sql import QUERIES, parse_queries

PACKAGE = Path(__file__).resolve().parents[2] / "embedq_server"


def names_used() -> set[str]:
    used: set[str] = set()
    for path in PACKAGE.glob("*.py"):
        used |= set(re.findall(r'QUERIES\["([a-z_]+)"\]', path.read_text()))
    return used


def test_every_query_the_code_uses_exists() -> None:
    assert names_used() - set(QUERIES) == set()


def test_every_query_is_used() -> None:
    assert set(QUERIES) - names_used() == set()


def test_each_block_starts_with_a_comment_saying_what_it_does() -> None:
    for name, text in QUERIES.items():
        assert text.startswith("-- "), name


def test_a_name_defined_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        parse_queries("-- a --\nSELECT 1;\n-- a --\nSELECT 2;\n")
