"""PostgreSQL: run_events announce themselves (a statement trigger sends the NOTIFY)

The writer no longer sends `SELECT pg_notify(…)` after each insert of events: one round trip
less per commit of a run. The payload names the sending process (`opengrove.sender`, set on
each connection at start) so a process ignores its own events, as before.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 11:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: one process holds the runs; streams follow its hub and log watcher
    op.execute(
        """
        CREATE FUNCTION opengrove_notify_run_events() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify(
                'opengrove_run_events',
                coalesce(current_setting('opengrove.sender', true), '') || ':' || runs.run_id
            )
            FROM (SELECT DISTINCT run_id FROM inserted) AS runs;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER run_events_notify AFTER INSERT ON run_events
        REFERENCING NEW TABLE AS inserted
        FOR EACH STATEMENT EXECUTE FUNCTION opengrove_notify_run_events()
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER run_events_notify ON run_events")
    op.execute("DROP FUNCTION opengrove_notify_run_events()")
