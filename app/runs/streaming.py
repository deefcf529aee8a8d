"""Server-sent events for a run: a subscriber to the run's event log, nothing more."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse

from app.db import Database
from app.runs.events import EventHub, follow


async def _frames(
    db: Database, hub: EventHub, run_id: str, after_seq: int
) -> AsyncIterator[dict[str, str]]:
    async for item in follow(db, hub, run_id, after_seq):
        yield {"event": item.event, "data": json.dumps(item.data, separators=(",", ":"))}
    yield {"event": "done", "data": "[DONE]"}


def run_event_stream(
    db: Database, hub: EventHub, run_id: str, after_seq: int = -1
) -> EventSourceResponse:
    return EventSourceResponse(
        _frames(db, hub, run_id, after_seq),
        sep="\n",
        ping=15,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
