"""Spend governance: projects, caps and their spend per period, reservations; the project of
each stream and task

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 12:55:00

Existing streams and tasks get no project (NULL); no row is rewritten.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import taskmeter.store.types

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = taskmeter.store.types.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=24), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("archived_at", UTC(), nullable=True),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_projects_team_id_teams")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_projects_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
    )
    op.create_index("uq_projects_scope_name", "projects", ["scope", "name"], unique=True)
    op.create_table(
        "caps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=48), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("team_id", sa.Integer(), nullable=True),
        sa.Column("project_id", sa.Integer(), nullable=True),
        sa.Column("period", sa.String(length=8), nullable=False),
        sa.Column("tz", sa.String(length=64), nullable=False),
        sa.Column("limit_nano", sa.BigInteger(), nullable=False),
        sa.Column("thresholds", taskmeter.store.types.JSONDoc(), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("updated_at", UTC(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_caps_user_id_users")),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_caps_team_id_teams")),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_caps_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_caps")),
    )
    op.create_index("uq_caps_subject_period", "caps", ["subject", "period"], unique=True)
    op.create_table(
        "cap_spend",
        sa.Column("cap_id", sa.Integer(), nullable=False),
        sa.Column("period_start", UTC(), nullable=False),
        sa.Column("used_nano", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["cap_id"], ["caps.id"], name=op.f("fk_cap_spend_cap_id_caps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("cap_id", "period_start", name=op.f("pk_cap_spend")),
    )
    op.create_table(
        "reservations",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=True),
        sa.Column("project_id", sa.Integer(), nullable=True),
        sa.Column("scope", sa.String(length=24), nullable=False),
        sa.Column("task_id", sa.String(length=256), nullable=True),
        sa.Column("stream_id", sa.Uuid(), nullable=True),
        sa.Column("estimate_nano", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("expires_at", UTC(), nullable=False),
        sa.Column("released_at", UTC(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_reservations_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_reservations_team_id_teams")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_reservations_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reservations")),
    )
    op.create_index("ix_reservations_user_open", "reservations", ["user_id", "expires_at"])
    op.create_index("ix_reservations_scope_open", "reservations", ["scope", "expires_at"])
    op.create_index("ix_reservations_stream", "reservations", ["stream_id"])
    with op.batch_alter_table("streams", schema=None) as batch_op:
        batch_op.add_column(sa.Column("project_id", sa.Integer(), nullable=True))
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("project_id", sa.Integer(), nullable=True))
    # Empty at first (no stream has a project yet): created at once, whatever the table's size.
    op.create_index(
        "ix_streams_scope_project",
        "streams",
        ["scope", "project_id", "created_at"],
        sqlite_where=sa.text("project_id IS NOT NULL"),
        postgresql_where=sa.text("project_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_streams_scope_project", table_name="streams")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("project_id")
    with op.batch_alter_table("streams", schema=None) as batch_op:
        batch_op.drop_column("project_id")
    op.drop_table("reservations")
    op.drop_table("cap_spend")
    op.drop_table("caps")
    op.drop_index("uq_projects_scope_name", table_name="projects")
    op.drop_table("projects")
