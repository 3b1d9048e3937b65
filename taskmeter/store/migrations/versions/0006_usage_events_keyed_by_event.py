"""usage_events keyed by (stream_id, event_id): the surrogate `id` and its index go

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 08:10:00

Nothing read the surrogate key; every event paid for it (a sequence value and a second index
entry), and COPY into the table took 12.6 µs a row with it, 9.8 without (bench/RESULTS.md).
On PostgreSQL the table is not rewritten (the dropped column's bytes stay in old rows), but
the key's index is built afresh (a unique constraint's index cannot be handed to a primary
key): on a large table that takes minutes, while writes to the table wait. On SQLite the
table is rebuilt WITHOUT ROWID, clustered on the key: one B-tree per event instead of two.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

import taskmeter.store.types

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The columns every version of the table has, in order (0001's definitions).
COLUMNS = (
    "stream_id",
    "event_id",
    "task_id",
    "type",
    "time",
    "model",
    "payload",
    "cost_nano",
    "received_at",
)


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("stream_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("task_id", sa.String(length=256), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("time", taskmeter.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("payload", taskmeter.store.types.JSONDoc(), nullable=False),
        sa.Column("cost_nano", sa.BigInteger(), nullable=True),
        sa.Column("received_at", taskmeter.store.types.UTCDateTime(timezone=True), nullable=False),
    ]


def _rebuild_sqlite(*shape: Any, **options: Any) -> None:
    """SQLite cannot change a table's key in place: build the new shape beside it, copy, swap."""
    op.create_table("usage_events_rebuilt", *shape, **options)
    names = ", ".join(COLUMNS)
    op.execute(
        f"INSERT INTO usage_events_rebuilt ({names}) SELECT {names} FROM usage_events"  # noqa: S608
    )
    op.drop_table("usage_events")
    op.rename_table("usage_events_rebuilt", "usage_events")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("pk_usage_events", "usage_events", type_="primary")
        op.drop_column("usage_events", "id")
        op.create_primary_key("pk_usage_events", "usage_events", ["stream_id", "event_id"])
        op.drop_constraint("uq_usage_events_stream_id_event_id", "usage_events", type_="unique")
        return
    _rebuild_sqlite(
        *_columns(),
        sa.PrimaryKeyConstraint("stream_id", "event_id", name="pk_usage_events"),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("pk_usage_events", "usage_events", type_="primary")
        op.create_unique_constraint(
            "uq_usage_events_stream_id_event_id", "usage_events", ["stream_id", "event_id"]
        )
        op.execute("ALTER TABLE usage_events ADD COLUMN id BIGSERIAL")
        op.create_primary_key("pk_usage_events", "usage_events", ["id"])
        return
    _rebuild_sqlite(
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        *_columns(),
        sa.PrimaryKeyConstraint("id", name="pk_usage_events"),
        sa.UniqueConstraint("stream_id", "event_id", name="uq_usage_events_stream_id_event_id"),
    )
