"""Loads every SQL statement from queries.sql into a name -> text mapping.

Keeping the statements in one file makes the queue's whole contract with PostgreSQL
readable in one place; the names are checked by a unit test.
"""

from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split a file of `-- name --` blocks into a dict of statements."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


QUERIES: dict[str, str] = parse_queries(
    resources.files(__package__).joinpath("queries.sql").read_text(encoding="utf-8")
)
