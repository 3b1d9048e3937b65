"""Price provenance and the re-pricing log

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-07 13:00:00

`price_sources`: one row per price a call was charged at (stated, prices file, genai-prices),
keyed by a hash of its content; `usage_events.price_source_id` names it (appended last: the
ingest path writes event rows positionally). Calls stored before keep NULL: their source was
not recorded. `reprice_runs`: the log and cursor of `taskmeter reprice`.
New tables and a nullable column only: nothing is rewritten.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import taskmeter.store.types

revision: str = "0010"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("usage_events", sa.Column("price_source_id", sa.BigInteger(), nullable=True))
    op.create_table(
        "price_sources",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("ref", sa.String(length=80), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("provider", sa.String(length=200), nullable=True),
        sa.Column("rates", taskmeter.store.types.JSONDoc(), nullable=True),
        sa.Column(
            "effective_from", taskmeter.store.types.UTCDateTime(timezone=True), nullable=True
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_sources")),
    )
    op.create_table(
        "reprice_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("started_at", taskmeter.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", taskmeter.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("rule", taskmeter.store.types.JSONDoc(), nullable=False),
        sa.Column("rule_key", sa.String(length=64), nullable=False),
        sa.Column("plan", taskmeter.store.types.JSONDoc(), nullable=False),
        sa.Column("cursor", sa.String(length=32), nullable=True),
        sa.Column("transactions", sa.Integer(), nullable=False),
        *(
            sa.Column(name, sa.BigInteger(), nullable=False)
            for name in (
                "streams_done",
                "calls_done",
                "calls_seen",
                "calls_changed",
                "streams_changed",
                "tasks_changed",
                "newly_priced",
                "base_before_nano",
                "base_after_nano",
                "charged_before_nano",
                "charged_after_nano",
            )
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reprice_runs")),
    )
    op.create_index(op.f("ix_reprice_runs_rule_key"), "reprice_runs", ["rule_key"])


def downgrade() -> None:
    op.drop_index(op.f("ix_reprice_runs_rule_key"), table_name="reprice_runs")
    op.drop_table("reprice_runs")
    op.drop_table("price_sources")
    with op.batch_alter_table("usage_events") as batch:
        batch.drop_column("price_source_id")
