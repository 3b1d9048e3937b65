"""scope_totals: each scope's finished streams and tasks, for the lists' unfiltered totals

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 20:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "scope_totals",
        sa.Column("scope", sa.String(length=24), nullable=False),
        sa.Column("finished_streams", sa.BigInteger(), nullable=False),
        sa.Column("tasks", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_scope_totals")),
    )
    # From the rollups, which already equal a GROUP BY over the rows.
    op.execute(
        "INSERT INTO scope_totals (scope, finished_streams, tasks) "
        "SELECT scope, sum(finished_streams), sum(tasks) FROM ("
        "  SELECT scope, streams AS finished_streams, 0 AS tasks FROM stream_rollups"
        "  WHERE finished"
        "  UNION ALL SELECT scope, 0, tasks FROM task_rollups"
        ") AS counted GROUP BY scope"
    )


def downgrade() -> None:
    op.drop_table("scope_totals")
