"""projects and API keys; every top-level object belongs to a project; rate-limit counters

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 07:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_PROJECT = "proj_default"
OWNED = ("assistants", "threads", "files", "vector_stores", "runs")
# (table, old index, old columns, new index, new columns): lists lead with the project.
REINDEXED = (
    (
        "assistants",
        "ix_assistants_seq",
        ["seq"],
        "ix_assistants_project_seq",
        ["project_id", "seq"],
    ),
    ("files", "ix_files_seq", ["seq"], "ix_files_project_seq", ["project_id", "seq"]),
    (
        "files",
        "ix_files_purpose_seq",
        ["purpose", "seq"],
        "ix_files_project_purpose_seq",
        ["project_id", "purpose", "seq"],
    ),
    (
        "vector_stores",
        "ix_vector_stores_seq",
        ["seq"],
        "ix_vector_stores_project_seq",
        ["project_id", "seq"],
    ),
)


def upgrade() -> None:
    projects = op.create_table(
        "projects",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column(
            "settings",
            sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql"),
            nullable=False,
        ),
    )
    op.bulk_insert(
        projects, [{"id": DEFAULT_PROJECT, "name": "default", "created_at": 0, "settings": {}}]
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "project_id",
            sa.String(64),
            sa.ForeignKey("projects.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("name", sa.String(128), nullable=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("redacted", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("revoked_at", sa.Integer(), nullable=True),
    )
    op.create_table(
        "rate_limit_windows",
        sa.Column("bucket", sa.String(160), primary_key=True),
        sa.Column("window", sa.BigInteger(), primary_key=True),
        sa.Column("used", sa.BigInteger(), nullable=False),
    )
    # Existing objects move into the default project (the server default does it).
    for table in OWNED:
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(
                sa.Column(
                    "project_id", sa.String(64), nullable=False, server_default=DEFAULT_PROJECT
                )
            )
    for table, old, _, new, columns in REINDEXED:
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_index(old)
            batch_op.create_index(new, columns, unique=False)
    with op.batch_alter_table("runs") as batch_op:
        batch_op.create_index("ix_runs_project_status", ["project_id", "status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_index("ix_runs_project_status")
    for table, old, old_columns, new, _ in REINDEXED:
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_index(new)
            batch_op.create_index(old, old_columns, unique=False)
    for table in OWNED:
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("project_id")
    op.drop_table("rate_limit_windows")
    op.drop_table("api_keys")
    op.drop_table("projects")
