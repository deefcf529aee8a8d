"""assistants, threads, messages

Revision ID: 0001
Revises:
Create Date: 2026-11-21 23:54:19.276164
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on PostgreSQL, JSON text on SQLite (as app.db.JSONType).
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "assistants",
        sa.Column("name", sa.String(length=256), nullable=True),
        sa.Column("description", sa.String(length=512), nullable=True),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("instructions", sa.Text(), nullable=True),
        sa.Column("tools", JSON, nullable=False),
        sa.Column("tool_resources", JSON, nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("temperature", sa.Float(), nullable=True),
        sa.Column("top_p", sa.Float(), nullable=True),
        sa.Column("response_format", JSON, nullable=True),
        sa.Column("reasoning_effort", sa.String(length=16), nullable=True),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("assistants", schema=None) as batch_op:
        batch_op.create_index("ix_assistants_seq", ["seq"], unique=False)

    op.create_table(
        "threads",
        sa.Column("tool_resources", JSON, nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "messages",
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("content", JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("incomplete_details", JSON, nullable=True),
        sa.Column("completed_at", sa.Integer(), nullable=True),
        sa.Column("incomplete_at", sa.Integer(), nullable=True),
        sa.Column("assistant_id", sa.String(length=64), nullable=True),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("attachments", JSON, nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["thread_id"], ["threads.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_messages_thread_run_seq", ["thread_id", "run_id", "seq"], unique=False
        )
        batch_op.create_index("ix_messages_thread_seq", ["thread_id", "seq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_thread_seq")
        batch_op.drop_index("ix_messages_thread_run_seq")

    op.drop_table("messages")
    op.drop_table("threads")
    with op.batch_alter_table("assistants", schema=None) as batch_op:
        batch_op.drop_index("ix_assistants_seq")

    op.drop_table("assistants")
