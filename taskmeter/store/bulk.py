"""Many rows in one PostgreSQL statement: new rows by binary COPY (`copy_rows`), upserts and
updates from one JSON array of objects (`insert_rows`, `update_rows`).

An executemany sends the statement once per row, and PostgreSQL parses and plans every one
of them afresh (the write engine prepares nothing, see `Store`): for an OTLP export's 50 new
streams and 50 tasks that planning was a third of PostgreSQL's time. A statement that reads
its rows from one JSON parameter (`json_populate_recordset`, typed by the table's own row
type) is parsed and planned once, whatever the row count. JSON rather than one array per
column: psycopg escapes text arrays element by element in Python, which for the rows' JSON
documents cost more than the planning saved; orjson writes the whole batch in one call.
Plain inserts go by COPY instead, which takes no conflict clause but parses nothing except
the JSON documents (the JSON parameter is parsed whole, then every document in it again).

JSON values are what the columns hold: JSON documents as they are, instants as RFC 3339
with their offset, UUIDs and decimals as strings.

These statements go to psycopg on the session's own connection (`driver_cursor`, `run`, and
`fetch` for the few that return rows): SQLAlchemy's execution path (its statement cache
lookup, execution context and result set-up) cost more Python than psycopg's whole execute
for them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson
import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import BigInteger, Boolean, Integer, String, Table, Uuid
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Executable

from taskmeter.store.types import DecimalText, JSONDoc, UTCDateTime

__all__ = [
    "copy_rows",
    "driver_cursor",
    "fetch",
    "fetch_compiled",
    "insert_rows",
    "insert_sql",
    "rows_json",
    "run",
    "update_rows",
]


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a column value")


def rows_json(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as the JSON text the statements below read."""
    return orjson.dumps(list(rows), default=_default, option=orjson.OPT_NON_STR_KEYS).decode()


def _source(table: Table, parameter: str) -> str:
    return f"json_populate_recordset(NULL::{table.name}, CAST(%({parameter})s AS json))"


@contextlib.contextmanager
def driver_cursor(
    db: Session, statement: str, *, row_factory: Any = None
) -> Iterator[psycopg.Cursor[Any]]:
    """A psycopg cursor on the connection of the session's transaction (the write engine's
    connections COPY jsonb with orjson, see `Store`). psycopg's errors leave it as
    SQLAlchemy's (an IntegrityError is one whatever path raised it), so callers and the app's
    handlers see one kind of error; a connection found broken is invalidated, as SQLAlchemy
    does, so that the pool drops it and a caller may retry on a fresh one."""
    connection = db.connection()
    driver = connection.connection.driver_connection
    assert driver is not None
    try:
        with driver.cursor(row_factory=row_factory) as cursor:
            yield cursor
    except psycopg.Error as exc:
        broken = driver.closed or driver.broken
        if broken:
            connection.invalidate(exc)
        raise DBAPIError.instance(
            statement, None, exc, psycopg.Error, connection_invalidated=broken
        ) from exc


def run(db: Session, sql: str, params: Mapping[str, Any]) -> None:
    """Execute a statement that returns no rows, in psycopg's parameter style (`%(name)s`)."""
    with driver_cursor(db, sql) as cursor:
        cursor.execute(sql, params)


def fetch_compiled(
    db: Session, statement: Executable, params: Mapping[str, Any], *, cache: bool = True
) -> list[Any]:
    """Run a SQLAlchemy statement by psycopg, compiled for PostgreSQL once (`cache`: the
    statement is a long-lived object, built once a shape), rows as named tuples. Values come
    as psycopg gives them: aware datetimes, parsed JSON, numeric sums as Decimal."""
    sql, defaults = _compiled(statement) if cache else _compile(statement)
    with driver_cursor(db, sql, row_factory=namedtuple_row) as cursor:
        cursor.execute(sql, {**defaults, **params})
        return cursor.fetchall()


def _compile(statement: Executable) -> tuple[str, dict[str, Any]]:
    compiled = statement.compile(dialect=_POSTGRESQL)  # type: ignore[attr-defined]
    return str(compiled), dict(compiled.params)


_compiled = functools.lru_cache(maxsize=256)(_compile)
_POSTGRESQL: Any = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]


def fetch(db: Session, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """Execute a statement and return its rows as tuples, in psycopg's parameter style: for
    small keyed statements run every batch, where SQLAlchemy's execution path cost more than
    the statement."""
    with driver_cursor(db, sql) as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


# Each column type's wire type in a binary COPY (a binary value must be of its column's
# type; text is varchar's format too). The first match wins: a BigInteger is an Integer.
_WIRE_TYPES: tuple[tuple[type[Any], str], ...] = (
    (JSONDoc, "jsonb"),
    (UTCDateTime, "timestamptz"),
    (Uuid, "uuid"),
    (BigInteger, "int8"),
    (Integer, "int4"),
    (Boolean, "bool"),
    (String, "text"),
    (DecimalText, "text"),
)


def _wire_type(column: Any) -> str:
    for kind, wire in _WIRE_TYPES:
        if isinstance(column.type, kind):
            return wire
    raise TypeError(f"{column}: no COPY wire type for {column.type!r}")


@functools.cache
def _copy_shape(table: Table) -> tuple[str, tuple[str, ...], tuple[int, ...]]:
    """The table's binary COPY statement, its columns' wire types, and which columns hold
    decimals as text."""
    wire = tuple(_wire_type(column) for column in table.columns)
    names = ", ".join(c.name for c in table.columns)
    decimals = tuple(i for i, c in enumerate(table.columns) if isinstance(c.type, DecimalText))
    return f"COPY {table.name} ({names}) FROM STDIN (FORMAT BINARY)", wire, decimals


def copy_rows(db: Session, table: Table, rows: Iterable[Sequence[Any]]) -> None:
    """Insert rows holding every column in the table's order, by binary COPY: PostgreSQL then
    parses nothing but the JSON documents, where `insert_rows`' one JSON parameter is parsed
    whole and every document in it a second time (for an OTLP export's 50 new streams, two
    thirds of their insert)."""
    statement, wire, decimals = _copy_shape(table)
    if decimals:
        rows = (_decimals_as_text(row, decimals) for row in rows)
    with driver_cursor(db, statement) as cursor, cursor.copy(statement) as copy:
        copy.set_types(wire)
        for row in rows:
            copy.write_row(row)


def _decimals_as_text(row: Sequence[Any], decimals: tuple[int, ...]) -> list[Any]:
    values = list(row)
    for i in decimals:
        if values[i] is not None:
            values[i] = str(values[i])
    return values


@functools.cache
def insert_sql(
    table: Table,
    names: tuple[str, ...],
    *,
    conflict: tuple[str, ...] = (),
    add: bool = False,
    parameter: str = "rows",
) -> str:
    """`INSERT` of the rows in the JSON parameter `%({parameter})s`. With `conflict`, a row whose
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
def _update_sql(table: Table, names: tuple[str, ...], key: str) -> str:
    updated = ", ".join(f"{n} = v.{n}" for n in names if n != key)
    return (
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
        run(db, sql, {"rows": rows_json(rows)})


def update_rows(db: Session, table: Table, key: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Set the columns of each row (each with the same keys) where `key` matches."""
    if rows:
        run(db, _update_sql(table, tuple(rows[0]), key), {"rows": rows_json(rows)})
