"""Price provenance: where a call's price came from, as a small immutable `price_sources` row.

    PriceBook finds rates ─▶ Rates.source (a PriceSource: kind, ref, model, provider, per-million
    rates, effective_from) ─▶ the call's usage_events.price_source_id
                          └▶ new sources, once per process ─ record_sources ─▶ price_sources

A source's id is a hash of its content, so every process derives the same id for the same
price without asking the store: the ingest hot path only copies an integer that was computed
when the rates were first looked up (once per model, tier and price period). The rows are
facts, never updated: a prices file edited and reloaded is a new source (its sha256 differs).
Sources are written inside the batch that first uses them and marked recorded only after that
batch commits, so no committed event names a source that was rolled back.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from taskmeter.store.tables import PRICE_SOURCES

__all__ = ["KINDS", "PriceSource", "SourceLedger", "record_sources"]

KINDS = ("stated", "file", "genai-prices")
RATE_NAMES = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")


def _plain(number: Decimal) -> str:
    """A rate as its shortest exact decimal text (2.50 and 2.5 are one price)."""
    text = format(number.normalize(), "f")
    return text


@dataclass(frozen=True)
class PriceSource:
    kind: str
    ref: str | None
    model: str | None
    provider: str | None
    # USD per million tokens by kind (RATE_NAMES), as exact decimal strings; None when stated.
    rates: tuple[tuple[str, str], ...] | None
    effective_from: datetime | None
    id: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        canonical = json.dumps(
            [
                self.kind,
                self.ref,
                self.model,
                self.provider,
                self.rates,
                self.effective_from.isoformat() if self.effective_from else None,
            ]
        )
        digest = hashlib.sha256(canonical.encode()).digest()
        # 63 bits: a positive BIGINT on both stores.
        object.__setattr__(self, "id", int.from_bytes(digest[:8], "big") >> 1)

    @staticmethod
    def per_million(rates: Sequence[Decimal]) -> tuple[tuple[str, str], ...]:
        """Per-token rates (input, output, cache read, cache write) as per-million strings."""
        return tuple(
            (name, _plain(rate * 1_000_000)) for name, rate in zip(RATE_NAMES, rates, strict=True)
        )

    def as_row(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "ref": self.ref,
            "model": self.model,
            "provider": self.provider,
            "rates": dict(self.rates) if self.rates is not None else None,
            "effective_from": self.effective_from,
        }


def record_sources(db: Session, sources: Sequence[PriceSource]) -> None:
    """Insert these sources unless stored (concurrent writers of one source: one row)."""
    if not sources:
        return
    rows = [s.as_row() for s in sorted(sources, key=lambda s: s.id)]
    if db.get_bind().dialect.name == "postgresql":
        db.execute(pg_insert(PRICE_SOURCES).on_conflict_do_nothing(index_elements=["id"]), rows)
    else:
        db.execute(sqlite_insert(PRICE_SOURCES).on_conflict_do_nothing(index_elements=["id"]), rows)


def load_sources(db: Session, ids: Sequence[int]) -> dict[int, dict[str, object]]:
    found = db.execute(select(PRICE_SOURCES).where(PRICE_SOURCES.c.id.in_(sorted(set(ids)))))
    return {row.id: dict(row._mapping) for row in found}


class SourceLedger:
    """Which sources this process has seen and which are known stored (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, PriceSource] = {}
        self._stored: set[int] = set()

    def seen(self, source: PriceSource) -> None:
        """Called when rates are first built (a cache miss), never per call."""
        with self._lock:
            if source.id not in self._stored:
                self._pending[source.id] = source

    def write_pending(self, db: Session) -> tuple[PriceSource, ...]:
        """Write the sources not known stored within the caller's transaction; returns them
        for `committed` once that transaction has committed."""
        if not self._pending:
            return ()
        with self._lock:
            pending = tuple(self._pending.values())
        record_sources(db, pending)
        return pending

    def committed(self, sources: Sequence[PriceSource]) -> None:
        if not sources:
            return
        with self._lock:
            for source in sources:
                self._stored.add(source.id)
                self._pending.pop(source.id, None)
