"""PostgreSQL: a run that becomes queued announces itself (a row trigger sends the NOTIFY)

Run creation and tool-output submission no longer send `SELECT pg_notify(…)` themselves: one
round trip less per run. As for run_events (0007), the payload names the sending process
(`opengrove.sender`) so a process does not wake itself for runs it already holds; a run put
back in the queue by anyone (a lapsed lease, an operator) now wakes the workers too.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 16:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: one process holds the runs
    op.execute(
        """
        CREATE FUNCTION opengrove_notify_run_queued() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify(
                'opengrove_runs',
                coalesce(current_setting('opengrove.sender', true), '') || ':' || NEW.id
            );
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER runs_created_notify AFTER INSERT ON runs
        FOR EACH ROW WHEN (NEW.status = 'queued')
        EXECUTE FUNCTION opengrove_notify_run_queued()
        """
    )
    op.execute(
        """
        CREATE TRIGGER runs_requeued_notify AFTER UPDATE OF status ON runs
        FOR EACH ROW WHEN (NEW.status = 'queued' AND OLD.status IS DISTINCT FROM 'queued')
        EXECUTE FUNCTION opengrove_notify_run_queued()
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER runs_requeued_notify ON runs")
    op.execute("DROP TRIGGER runs_created_notify ON runs")
    op.execute("DROP FUNCTION opengrove_notify_run_queued()")
