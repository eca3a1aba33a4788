"""The ledger's named SQL queries, parsed once from ``sql/queries.sql``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from typing import LiteralString

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, LiteralString]:
    """Split a .sql file into its named queries (``-- name: <name>`` opens each)."""
    queries: dict[str, LiteralString] = {}
    parts = _NAME.split(text)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("-- ")]
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        # The file ships with the package: its text is as trusted as a literal in the code.
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


def sql_text(name: str) -> str:
    return resources.files("workers.ledger").joinpath("sql").joinpath(name).read_text(encoding="utf-8")


def with_row_columns(queries: Mapping[str, LiteralString]) -> dict[str, LiteralString]:
    """``queries`` with ``{row_columns}`` replaced by the ``row_columns`` fragment: the one
    definition of how a reader reads a ledger row (history, the projection's rebuild)."""
    columns = queries["row_columns"]
    return {name: text.replace("{row_columns}", columns) for name, text in queries.items()}


QUERIES: Mapping[str, LiteralString] = with_row_columns(parse(sql_text("queries.sql")))
