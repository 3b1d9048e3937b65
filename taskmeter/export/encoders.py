"""Records to bytes: CSV, JSON Lines and Parquet, a chunk at a time.

    encoder = encoder_for("csv", columns)
    yield encoder.start(); for chunk in chunks: yield encoder.encode(chunk); yield encoder.finish()

Parquet goes through pyarrow (the optional extra `taskmeter[parquet]`): records are buffered
up to a row group (ROW_GROUP rows), written by one `ParquetWriter` into a sink that keeps
only the bytes not yet sent, and those bytes go out; the footer follows the last group.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Protocol

import orjson

from taskmeter.errors import ApiError
from taskmeter.export.columns import Column, Kind
from taskmeter.export.rows import Record
from taskmeter.pricing.credits import NANO
from taskmeter.timeutil import iso_z

__all__ = [
    "MEDIA_TYPES",
    "ROW_GROUP",
    "Encoder",
    "ParquetUnavailable",
    "credits_text",
    "encoder_for",
]

MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
}
ROW_GROUP = 8192


class ParquetUnavailable(ApiError):
    """format=parquet on a server installed without pyarrow."""

    status = 501


def credits_text(nano: int) -> str:
    """Nano-credits as an exact decimal string with 9 places (3500000 -> "0.003500000")."""
    sign = "-" if nano < 0 else ""
    whole, part = divmod(abs(nano), NANO)
    return f"{sign}{whole}.{part:09d}"


def _same(value: Any) -> Any:
    return value


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


_TEXT: dict[Kind, Callable[[Any], Any]] = {
    "string": _same,
    "integer": _same,
    "boolean": lambda b: "true" if b else "false",
    "time": iso_z,
    "credits": credits_text,
    "decimal": lambda d: format(d, "f"),
    "json": _json_text,
}
# JSON Lines: numbers and booleans stay JSON's own, the rest as CSV writes them.
_JSON: dict[Kind, Callable[[Any], Any]] = {**_TEXT, "boolean": _same, "json": _same}


class Encoder(Protocol):
    media_type: str
    extension: str

    def start(self) -> bytes: ...

    def encode(self, records: Sequence[Record]) -> bytes: ...

    def finish(self) -> bytes: ...


def _converters(
    columns: Sequence[Column], table: dict[Kind, Callable[[Any], Any]]
) -> list[tuple[int, Callable[[Any], Any]]]:
    """(position, conversion) of the columns whose values need one (not None)."""
    return [(i, table[c.kind]) for i, c in enumerate(columns) if table[c.kind] is not _same]


def _converted(
    records: Sequence[Record], conversions: list[tuple[int, Callable[[Any], Any]]]
) -> list[list[Any]]:
    out = []
    for record in records:
        row = list(record)
        for i, convert in conversions:
            value = row[i]
            if value is not None:
                row[i] = convert(value)
        out.append(row)
    return out


class CsvEncoder:
    """RFC 4180 CSV (CRLF line ends, a header line), UTF-8; a null is an empty field."""

    media_type = MEDIA_TYPES["csv"]
    extension = "csv"

    def __init__(self, columns: Sequence[Column]) -> None:
        self.names = [c.name for c in columns]
        self.convert = _converters(columns, _TEXT)
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer)

    def _take(self) -> bytes:
        text = self.buffer.getvalue()
        self.buffer.seek(0)
        self.buffer.truncate()
        return text.encode()

    def start(self) -> bytes:
        self.writer.writerow(self.names)
        return self._take()

    def encode(self, records: Sequence[Record]) -> bytes:
        # csv writes None as an empty field and an int as its digits.
        self.writer.writerows(_converted(records, self.convert))
        return self._take()

    def finish(self) -> bytes:
        return b""


class JsonlEncoder:
    """One JSON object a line, every column present (null when unknown)."""

    media_type = MEDIA_TYPES["jsonl"]
    extension = "jsonl"

    def __init__(self, columns: Sequence[Column]) -> None:
        self.names = [c.name for c in columns]
        self.convert = _converters(columns, _JSON)

    def start(self) -> bytes:
        return b""

    def encode(self, records: Sequence[Record]) -> bytes:
        names = self.names
        return b"".join(
            orjson.dumps(dict(zip(names, row, strict=True))) + b"\n"
            for row in _converted(records, self.convert)
        )

    def finish(self) -> bytes:
        return b""


class _Drain(io.RawIOBase):
    """A write-only file that keeps what was written until `take` hands it over."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts = []
        return out


class ParquetEncoder:
    """Parquet (zstd), one row group every ROW_GROUP records; credits decimal128(38, 9),
    times timestamp[us, UTC]."""

    media_type = MEDIA_TYPES["parquet"]
    extension = "parquet"

    def __init__(self, columns: Sequence[Column], row_group: int = ROW_GROUP) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ParquetUnavailable(
                "format=parquet needs pyarrow on the server (pip install 'taskmeter[parquet]')",
                code="parquet_unavailable",
            ) from None
        self.pa, self.pq = pa, pq
        types = {
            "string": pa.string(),
            "integer": pa.int64(),
            "boolean": pa.bool_(),
            "time": pa.timestamp("us", tz="UTC"),
            "credits": pa.decimal128(38, 9),
            "decimal": pa.decimal128(38, 18),
            "json": pa.string(),
        }
        self.columns = list(columns)
        self.schema = pa.schema(
            [pa.field(c.name, types[c.kind], nullable=c.nullable) for c in columns]
        )
        self.row_group = row_group
        self.pending: list[Record] = []
        self.sink = _Drain()
        self.writer: Any = None

    def start(self) -> bytes:
        self.writer = self.pq.ParquetWriter(self.sink, self.schema, compression="zstd")
        return self.sink.take()

    def _flush(self) -> bytes:
        if not self.pending:
            return b""
        arrays = []
        for column, values in zip(self.columns, zip(*self.pending, strict=True), strict=True):
            if column.kind == "credits":
                values = tuple(None if v is None else Decimal(v).scaleb(-9) for v in values)
            elif column.kind == "json":
                values = tuple(None if v is None else _json_text(v) for v in values)
            arrays.append(self.pa.array(values, type=self.schema.field(column.name).type))
        self.pending = []
        self.writer.write_table(self.pa.Table.from_arrays(arrays, schema=self.schema))
        return self.sink.take()

    def encode(self, records: Sequence[Record]) -> bytes:
        self.pending.extend(records)
        if len(self.pending) < self.row_group:
            return b""
        return self._flush()

    def finish(self) -> bytes:
        out = self._flush()
        self.writer.close()
        return out + self.sink.take()


def encoder_for(fmt: str, columns: Sequence[Column]) -> Encoder:
    if fmt == "parquet":
        return ParquetEncoder(columns)
    if fmt == "jsonl":
        return JsonlEncoder(columns)
    return CsvEncoder(columns)
