"""Many rows in one PostgreSQL statement: the rows passed as one JSON array of objects.

An executemany sends the statement once per row, and PostgreSQL parses and plans every one
of them afresh (the write engine prepares nothing, see `Store`): for an OTLP export's 50 new
streams and 50 tasks that planning was a third of PostgreSQL's time. A statement that reads
its rows from one JSON parameter (`json_populate_recordset`, typed by the table's own row
type) is parsed and planned once, whatever the row count. JSON rather than one array per
column: psycopg escapes text arrays element by element in Python, which for the rows' JSON
documents cost more than the planning saved; orjson writes the whole batch in one call.

Values are what the columns hold: JSON documents as they are, instants as RFC 3339 with
their offset, UUIDs and decimals as strings.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Table, text
from sqlalchemy.orm import Session

__all__ = ["insert_rows", "insert_sql", "rows_json", "update_rows"]


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a column value")


def rows_json(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as the JSON text the statements below read."""
    return orjson.dumps(list(rows), default=_default, option=orjson.OPT_NON_STR_KEYS).decode()


def _source(table: Table, parameter: str) -> str:
    return f"json_populate_recordset(NULL::{table.name}, CAST(:{parameter} AS json))"


@functools.cache
def insert_sql(
    table: Table,
    names: tuple[str, ...],
    *,
    conflict: tuple[str, ...] = (),
    add: bool = False,
    parameter: str = "rows",
) -> str:
    """`INSERT` of the rows in the JSON parameter `:{parameter}`. With `conflict`, a row whose
    key exists updates it: its other columns are replaced, or with `add`, added to."""
    columns = ", ".join(names)
    sql = (
        f"INSERT INTO {table.name} ({columns}) "  # noqa: S608 - column names
        f"SELECT {columns} FROM {_source(table, parameter)}"
    )
    if conflict:
        updated = ", ".join(
            f"{n} = {table.name}.{n} + excluded.{n}" if add else f"{n} = excluded.{n}"
            for n in names
            if n not in conflict
        )
        sql += f" ON CONFLICT ({', '.join(conflict)}) DO UPDATE SET {updated}"
    return sql


@functools.cache
def _text(sql: str) -> Any:
    return text(sql)


@functools.cache
def _update_sql(table: Table, names: tuple[str, ...], key: str) -> Any:
    updated = ", ".join(f"{n} = v.{n}" for n in names if n != key)
    return text(
        f"UPDATE {table.name} AS t SET {updated} "  # noqa: S608 - column names
        f"FROM {_source(table, 'rows')} AS v WHERE t.{key} = v.{key}"
    )


def insert_rows(
    db: Session,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    conflict: tuple[str, ...] = (),
) -> None:
    """Insert `rows` (each with the same keys), in the order given; with `conflict`, a row
    whose key exists replaces that row's other columns."""
    if rows:
        sql = insert_sql(table, tuple(rows[0]), conflict=conflict)
        db.execute(_text(sql), {"rows": rows_json(rows)})


def update_rows(db: Session, table: Table, key: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Set the columns of each row (each with the same keys) where `key` matches."""
    if rows:
        db.execute(_update_sql(table, tuple(rows[0]), key), {"rows": rows_json(rows)})
