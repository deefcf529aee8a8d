"""vector stores made by a thread's attachments remember the thread (they go with it)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("vector_stores") as batch_op:
        batch_op.add_column(sa.Column("thread_id", sa.String(64), nullable=True))
        batch_op.create_index("ix_vector_stores_thread", ["thread_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("vector_stores") as batch_op:
        batch_op.drop_index("ix_vector_stores_thread")
        batch_op.drop_column("thread_id")
