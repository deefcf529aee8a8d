"""The run state machine: the only place a run's status changes.

Every transition is a conditional UPDATE (`… WHERE status IN (allowed sources)`), so the
API (cancel, submit_tool_outputs) and the executor can race without corrupting a run:
the loser sees `False` and re-reads the row.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from app.db import one_of
from app.ids import now
from app.observability.metrics import count_run_status
from app.runs.models import Run

ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    "queued": ("requires_action",),
    "in_progress": ("queued",),
    "requires_action": ("in_progress",),
    "cancelling": ("queued", "in_progress"),
    "cancelled": ("queued", "in_progress", "requires_action", "cancelling"),
    "completed": ("in_progress",),
    "incomplete": ("in_progress",),
    "failed": ("queued", "in_progress", "cancelling", "requires_action"),
    "expired": ("queued", "requires_action"),
}

# The timestamp column each terminal status stamps.
_STAMP = {
    "cancelled": "cancelled_at",
    "completed": "completed_at",
    "failed": "failed_at",
    "incomplete": None,
    "expired": None,
}


def transition_values(to: str, fields: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The columns a move to `to` writes, and the statuses it may start from."""
    values: dict[str, Any] = {"status": to, **fields}
    stamp = _STAMP.get(to)
    if stamp and stamp not in values:
        values[stamp] = now()
    if to in _STAMP or to == "requires_action":
        values.setdefault("lease_owner", None)
        values.setdefault("lease_expires_at", None)
    if to in _STAMP:
        values.setdefault("expires_at", None)  # an ended run no longer expires
    return values, ALLOWED_FROM[to]


async def transition(session: AsyncSession, run: Run, to: str, **fields: Any) -> bool:
    """Move `run` to status `to` if its stored status allows it; False if it did not.
    (The executor's hot path does the same on plain rows: `app.runs.store.transition`.)"""
    values, allowed = transition_values(to, fields)
    result = await session.execute(
        update(Run)
        .where(Run.id == run.id, one_of(Run.status, allowed))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 0:
        await session.refresh(run)
        return False
    for key, value in values.items():
        # Already written by the UPDATE: record it as committed, so no flush repeats it.
        set_committed_value(run, key, value)
    count_run_status(to)
    return True
