"""Large values of streams and tasks compressed with lz4 on PostgreSQL

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 17:40:00

A stream row carries its tool history and a task row its rendered TaskUsage: past 2 kB
PostgreSQL compresses them, with pglz unless told otherwise, and every ingest batch writes the
rows of the streams and tasks it touched. Copying 1,077 stream rows of the ingest benchmark
into a table took 130–145 ms with pglz and 84–86 ms with lz4; 1,076 task rows 86–120 ms
against 37 ms (bench/RESULTS.md). Only values written from now on are compressed with lz4;
those already stored stay as they are and read back the same, so nothing is rewritten.

Skipped where it cannot apply: SQLite, PostgreSQL before 14 (no per-column compression) and a
server built without lz4. Downgrade sets the columns back to the server's default.
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every column of these tables that can hold a value long enough to be compressed.
LARGE_VALUES = {
    "streams": (
        "tool_history",
        "tool_breakdown",
        "model_calls",
        "agent_breakdown",
        "error_message",
        "task_title",
    ),
    "tasks": ("usage", "error_message", "task_title"),
}


def _lz4_available() -> bool:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    # `default_toast_compression` exists from PostgreSQL 14 on and lists lz4 only when the
    # server was built with it.
    choices = bind.execute(
        text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
    ).scalar()
    return choices is not None and "lz4" in choices


def _set_compression(method: str) -> None:
    for table, columns in LARGE_VALUES.items():
        changes = ", ".join(f"ALTER COLUMN {name} SET COMPRESSION {method}" for name in columns)
        op.execute(f"ALTER TABLE {table} {changes}")


def upgrade() -> None:
    if _lz4_available():
        _set_compression("lz4")


def downgrade() -> None:
    if _lz4_available():
        _set_compression("default")
