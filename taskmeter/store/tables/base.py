"""The declarative base every table shares: naming conventions, id type, rollup figures."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Integer,
    MetaData,
)
from sqlalchemy.orm import DeclarativeBase

# The coarse rollup tiers are read as ranges of one scope's rows: their primary key carries
# the figures (an index-only scan on PostgreSQL, a WITHOUT ROWID table clustered on the key on
# SQLite), so a range reads a few consecutive pages instead of one heap page per row, scattered
# by the order writers happened to insert them (EXPLAIN ANALYZE in bench/RESULTS.md).
CLUSTERED = {"sqlite_with_rowid": False}

# A stream rollup's additive figures, in the order the rollup code reads and writes them.
STREAM_FIGURES = (
    "streams",
    "neo_credits_nano",
    "base_nano",
    "tool_calls",
    "input_tokens",
    "output_tokens",
    "steps",
    "agent_triggers",
    "execution_ms",
)

# SQLite only aliases the rowid for a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
