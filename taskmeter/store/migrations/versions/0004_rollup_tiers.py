"""Monthly rollups (by model, and by owner) and the hourly per-scope series the summary reads

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 21:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

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


def _month_of_bucket() -> str:
    """SQL for the first 15-minute bucket of the UTC month holding `bucket`."""
    if op.get_bind().dialect.name == "postgresql":
        return (
            "(extract(epoch FROM date_trunc('month', "
            "to_timestamp(bucket * 900) AT TIME ZONE 'UTC'))::bigint / 900)"
        )
    return "(CAST(strftime('%s', bucket * 900, 'unixepoch', 'start of month') AS INTEGER) / 900)"


def _counted(table: str, key: str | None, unit: str) -> str:
    """INSERT … SELECT of finished streams' credits and tasks created per (scope, unit[, key])."""
    extra = f", {key}" if key else ""
    return (
        f"INSERT INTO {table} (scope, bucket{extra}, neo_credits_nano, tasks) "  # noqa: S608
        f"SELECT scope, unit{extra}, sum(neo), sum(tasks) FROM ("
        f"  SELECT scope, {unit} AS unit{extra}, neo_credits_nano AS neo, 0 AS tasks"
        "   FROM stream_rollups WHERE finished"
        f"  UNION ALL SELECT scope, {unit}{extra}, 0, tasks FROM task_rollups"
        f") AS counted GROUP BY scope, unit{extra}"
    )


def upgrade() -> None:
    op.create_table(
        "stream_rollups_monthly",
        sa.Column("scope", sa.String(length=24), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("is_byok", sa.Boolean(), nullable=False),
        sa.Column("finished", sa.Boolean(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in STREAM_FIGURES),
        sa.PrimaryKeyConstraint(
            "scope",
            "bucket",
            "model",
            "is_byok",
            "finished",
            name=op.f("pk_stream_rollups_monthly"),
            postgresql_include=list(STREAM_FIGURES),
        ),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "task_rollups_monthly",
        sa.Column("scope", sa.String(length=24), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("is_byok", sa.Boolean(), nullable=False),
        sa.Column("tasks", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "scope",
            "bucket",
            "model",
            "status",
            "is_byok",
            name=op.f("pk_task_rollups_monthly"),
            postgresql_include=["tasks"],
        ),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "owner_months",
        sa.Column("scope", sa.String(length=24), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("owner_user_id", sa.Integer(), nullable=False),
        sa.Column("neo_credits_nano", sa.BigInteger(), nullable=False),
        sa.Column("tasks", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "scope",
            "bucket",
            "owner_user_id",
            name=op.f("pk_owner_months"),
            postgresql_include=["neo_credits_nano", "tasks"],
        ),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "scope_hours",
        sa.Column("scope", sa.String(length=24), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("neo_credits_nano", sa.BigInteger(), nullable=False),
        sa.Column("tasks", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "scope",
            "bucket",
            name=op.f("pk_scope_hours"),
            postgresql_include=["neo_credits_nano", "tasks"],
        ),
        sqlite_with_rowid=False,
    )
    # Primary keys carry the figures (index-only scans on PostgreSQL; WITHOUT ROWID tables
    # clustered on the key on SQLite): see CLUSTERED in taskmeter/store/tables/base.py.
    # From the 15-minute rollups, which already equal a GROUP BY over the rows. The SQL is
    # built from this file's constants only, hence the S608 exemptions.
    month = _month_of_bucket()
    sums = ", ".join(f"sum({name})" for name in STREAM_FIGURES)
    op.execute(
        "INSERT INTO stream_rollups_monthly (scope, bucket, model, is_byok, finished, "  # noqa: S608
        f"{', '.join(STREAM_FIGURES)}) "
        f"SELECT scope, {month}, model, is_byok, finished, {sums} "
        f"FROM stream_rollups GROUP BY scope, {month}, model, is_byok, finished"
    )
    op.execute(
        "INSERT INTO task_rollups_monthly (scope, bucket, model, status, is_byok, tasks) "  # noqa: S608
        f"SELECT scope, {month}, model, status, is_byok, sum(tasks) "
        f"FROM task_rollups GROUP BY scope, {month}, model, status, is_byok"
    )
    op.execute(_counted("owner_months", "owner_user_id", month))
    op.execute(_counted("scope_hours", None, "bucket - bucket % 4"))


def downgrade() -> None:
    op.drop_table("scope_hours")
    op.drop_table("owner_months")
    op.drop_table("task_rollups_monthly")
    op.drop_table("stream_rollups_monthly")
