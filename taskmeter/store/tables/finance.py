"""Finance: where each call's price came from (price_sources) and the re-pricing log."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    Table,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from taskmeter.store.tables.base import Base
from taskmeter.store.types import JSONDoc, UTCDateTime


class PriceSourceRecord(Base):
    """One price a call was charged at: a stated cost, a prices-file entry (`ref`: the file's
    sha256) or a genai-prices entry (`ref`: its version), with the per-million rates."""

    __tablename__ = "price_sources"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))  # "stated" | "file" | "genai-prices"
    ref: Mapped[str | None] = mapped_column(String(80))
    model: Mapped[str | None] = mapped_column(String(200))
    provider: Mapped[str | None] = mapped_column(String(200))
    rates: Mapped[dict[str, str] | None] = mapped_column(JSONDoc())
    effective_from: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RepriceRun(Base):
    """The re-pricing log: one row per `taskmeter reprice` run, its cursor committed with
    every transaction of streams it re-priced (so an interrupted run resumes exactly)."""

    __tablename__ = "reprice_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    actor: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # "running" | "done" | "failed"
    state: Mapped[str] = mapped_column(String(16))
    # The filters and price rules (prices file sha256, genai-prices version): a run resumes
    # only under the same ones.
    rule: Mapped[dict[str, Any]] = mapped_column(JSONDoc())
    rule_key: Mapped[str] = mapped_column(String(64), index=True)
    # What the run set out to change, as planned before anything changed: the counts below
    # and the credit differences by model, user and month.
    plan: Mapped[dict[str, Any]] = mapped_column(JSONDoc())
    # The last stream re-priced (hex id); progress, committed with each transaction.
    cursor: Mapped[str | None] = mapped_column(String(32))
    transactions: Mapped[int] = mapped_column(Integer, default=0)
    streams_done: Mapped[int] = mapped_column(BigInteger, default=0)
    calls_done: Mapped[int] = mapped_column(BigInteger, default=0)
    calls_seen: Mapped[int] = mapped_column(BigInteger, default=0)
    calls_changed: Mapped[int] = mapped_column(BigInteger, default=0)
    streams_changed: Mapped[int] = mapped_column(BigInteger, default=0)
    tasks_changed: Mapped[int] = mapped_column(BigInteger, default=0)
    newly_priced: Mapped[int] = mapped_column(BigInteger, default=0)
    # Sums over the calls in range (cost_nano), and the changed streams' charged credits.
    base_before_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    base_after_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    charged_before_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    charged_after_nano: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text)


# The tables as Core `Table`s, for statements that skip the ORM (a mapped class's
# `__table__` is typed as a plain FromClause).
PRICE_SOURCES = cast(Table, PriceSourceRecord.__table__)
REPRICE_RUNS = cast(Table, RepriceRun.__table__)
