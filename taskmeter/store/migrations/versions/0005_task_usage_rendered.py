"""tasks.usage: each task's TaskUsage JSON as served, in place of the stored figures

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 19:10:00

A task page was half decoding the stored figures, converting them and encoding the answer
(bench/RESULTS.md); the rendered form is what every read wants. The figures' other reader,
the rollup bookkeeping, needs only columns the row already has. Existing rows are rendered
here from their figures, in pages.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

import taskmeter.store.types
from taskmeter.timeutil import parse_instant
from taskmeter.usage.figures import render_task_usage

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PAGE = 2000


def _stored_figures(row: dict[str, Any]) -> dict[str, Any]:
    """A task's figures as 0004 stored them (times as ISO strings)."""
    return {**row, **{key: parse_instant(row[key]) for key in ("created_at", "finished_at")}}


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("usage", sa.Text(), nullable=True))
    tasks = sa.table(
        "tasks",
        sa.column("scope", sa.String()),
        sa.column("task_id", sa.String()),
        sa.column("row", taskmeter.store.types.JSONDoc()),
        sa.column("usage", sa.Text()),
    )
    bind = op.get_bind()
    fill = (
        tasks.update()
        .where(tasks.c.scope == sa.bindparam("s"), tasks.c.task_id == sa.bindparam("t"))
        .values(usage=sa.bindparam("u"))
    )
    after: tuple[str, str] | None = None
    while True:
        query = sa.select(tasks.c.scope, tasks.c.task_id, tasks.c.row)
        if after is not None:
            query = query.where(sa.tuple_(tasks.c.scope, tasks.c.task_id) > after)
        page = bind.execute(query.order_by(tasks.c.scope, tasks.c.task_id).limit(PAGE)).all()
        if not page:
            break
        bind.execute(
            fill,
            [
                {"s": scope, "t": task_id, "u": render_task_usage(_stored_figures(row))}
                for scope, task_id, row in page
            ],
        )
        after = (page[-1][0], page[-1][1])
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.alter_column("usage", existing_type=sa.Text(), nullable=False)
        batch_op.drop_column("row")


def downgrade() -> None:
    if op.get_bind().execute(sa.text("SELECT 1 FROM tasks LIMIT 1")).first() is not None:
        raise RuntimeError(
            "0005 cannot be undone on a store that has tasks: the rendered rows do not hold "
            "the figures 0004 stored; restore the backup taken before upgrading"
        )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("row", taskmeter.store.types.JSONDoc(), nullable=False))
        batch_op.drop_column("usage")
