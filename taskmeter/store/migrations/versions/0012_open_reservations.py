"""Reservations: index only the open ones

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08 00:30:00

Authorize reads a payer's open holds by (user, expires_at) and (scope, expires_at). Released
reservations stayed in those indexes until they expired, so every authorization of a busy
scope walked the last hour's released ones; the indexes are now partial on `released_at IS
NULL` with `released_at` a key column (so that a release is never a HOT update: the old row
version dies and index scans mark its entry dead), and ingestion releases a stream's
reservations when the stream finishes. On PostgreSQL a released row's entry stays in them
until the table is vacuumed, so the table is vacuumed every 1,000 changed rows rather than at
a fifth of its size.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = sa.text("released_at IS NULL")


def upgrade() -> None:
    for name, column in (("ix_reservations_user_open", "user_id"),
                         ("ix_reservations_scope_open", "scope")):  # fmt: skip
        op.drop_index(name, table_name="reservations")
        op.create_index(
            name,
            "reservations",
            [column, "expires_at", "released_at"],
            sqlite_where=_OPEN,
            postgresql_where=_OPEN,
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE reservations SET (autovacuum_vacuum_scale_factor = 0,"
            " autovacuum_vacuum_threshold = 1000)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE reservations RESET (autovacuum_vacuum_scale_factor,"
            " autovacuum_vacuum_threshold)"
        )
    for name, column in (("ix_reservations_user_open", "user_id"),
                         ("ix_reservations_scope_open", "scope")):  # fmt: skip
        op.drop_index(name, table_name="reservations")
        op.create_index(name, "reservations", [column, "expires_at"])
