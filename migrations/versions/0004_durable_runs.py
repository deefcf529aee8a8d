"""durable runs: event sequence reservation, interruption count, closed turns

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 04:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("next_event_seq", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("interruptions", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("turns", sa.Integer(), nullable=False, server_default="0"))
    # Events are stored as the JSON text they are sent as: encoded once, never re-parsed.
    with op.batch_alter_table("run_events", schema=None) as batch_op:
        batch_op.alter_column(
            "data",
            existing_type=sa.JSON(),
            type_=sa.Text(),
            existing_nullable=False,
            postgresql_using="data::text",
        )
    # Runs already in the log continue their numbering; steps already taken count as turns.
    op.execute(
        "UPDATE runs SET next_event_seq = COALESCE("
        "(SELECT MAX(seq) + 1 FROM run_events WHERE run_events.run_id = runs.id), 0), "
        "turns = (SELECT COUNT(*) FROM run_steps WHERE run_steps.run_id = runs.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("run_events", schema=None) as batch_op:
        batch_op.alter_column(
            "data",
            existing_type=sa.Text(),
            type_=sa.JSON(),
            existing_nullable=False,
            postgresql_using="data::jsonb",
        )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("turns")
        batch_op.drop_column("interruptions")
        batch_op.drop_column("next_event_seq")
