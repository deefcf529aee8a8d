"""Pruning run event logs by age: what `?stream=true` replays is not kept for ever.

The log of a run that has ended and was created more than the retention ago
(OPENGROVE_EVENT_RETENTION_SECONDS) is deleted, whole; the run, its steps and its messages
stay. A stream of such a run gets its final event alone (`app.runs.events`). Runs still
active are never touched, however old.

Rows are looked at oldest first (by their primary key, which grows as they are written), in
batches, and a pass stops at the first row of a run younger than the retention: everything
written after it is younger still, or belongs to a run that ended after it did — reached in a
later pass, once the rows before it are gone. So a pass reads what it deletes, plus the few
rows of old runs still active, plus one batch; no state is kept between passes.
"""

from __future__ import annotations

import time

from sqlalchemy import Connection, delete, select

from app.db import Database
from app.runs.events import EVENT_TABLE, RUN_TABLE
from app.runs.models import TERMINAL_STATUSES

BATCH_ROWS = 1000  # log rows looked at per transaction
MAX_BATCHES = 100  # per pass (housekeeping comes back a minute later)


def _doomed(conn: Connection, after_id: int, cutoff_seq: int) -> tuple[set[str], int, bool]:
    """Runs whose logs may go, among the next BATCH_ROWS log rows after row `after_id`; the
    last row looked at; whether the pass is done."""
    rows = conn.execute(
        select(EVENT_TABLE.c.id, EVENT_TABLE.c.run_id, RUN_TABLE.c.status, RUN_TABLE.c.seq)
        .select_from(EVENT_TABLE.outerjoin(RUN_TABLE, RUN_TABLE.c.id == EVENT_TABLE.c.run_id))
        .where(EVENT_TABLE.c.id > after_id)
        .order_by(EVENT_TABLE.c.id)
        .limit(BATCH_ROWS)
    ).all()
    doomed: set[str] = set()
    for row_id, run_id, status, created in rows:
        if created is not None and created >= cutoff_seq:
            return doomed, after_id, True  # a young run: the rest is younger
        after_id = row_id
        if status is None or status in TERMINAL_STATUSES:
            doomed.add(run_id)  # (no run: a log its run's deletion left behind)
    return doomed, after_id, len(rows) < BATCH_ROWS


def _delete_logs(conn: Connection, run_ids: set[str]) -> int:
    return conn.execute(delete(EVENT_TABLE).where(EVENT_TABLE.c.run_id.in_(run_ids))).rowcount


async def prune_event_logs(db: Database, retention_seconds: float) -> int:
    """Delete the logs of ended runs created more than `retention_seconds` ago; the number of
    log rows deleted."""
    # runs.seq is the run's creation time in nanoseconds (app.ids.next_seq).
    cutoff_seq = time.time_ns() - int(retention_seconds * 1e9)
    deleted = 0
    after_id = 0
    for _ in range(MAX_BATCHES):
        doomed, after_id, done = await db.transact(_doomed, after_id, cutoff_seq, writes=False)
        if doomed:
            deleted += await db.transact(_delete_logs, doomed)
        if done:
            break
    return deleted
