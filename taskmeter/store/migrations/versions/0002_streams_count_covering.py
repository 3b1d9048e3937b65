"""streams: status in ix_streams_scope_created, so counting a scope's streams is covered

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 19:58:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINISHED = sa.text("status IS NOT NULL")


def _recreate(columns: list[str]) -> None:
    # Plain DROP/CREATE INDEX on both stores: no table rebuild.
    op.drop_index("ix_streams_scope_created", table_name="streams")
    op.create_index(
        "ix_streams_scope_created",
        "streams",
        columns,
        unique=False,
        sqlite_where=FINISHED,
        postgresql_where=FINISHED,
    )


def upgrade() -> None:
    _recreate(["scope", "created_at", "stream_id", "status"])


def downgrade() -> None:
    _recreate(["scope", "created_at", "stream_id"])
