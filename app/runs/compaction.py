"""An ended run's event log rewritten as one `COMPACTED` row, in batches, after the run ends.

Not in the transaction that ends the run: reading the log back there made that transaction
three trips to the database more (on PostgreSQL it is otherwise one statement), on every
run's critical path. A writer that persisted a run's last events tells its `EventHub`
(`ended`); the `LogCompactor` of the process takes those runs every `interval` and compacts
them a batch per transaction. Until then the log is the rows it was: replays are the same
either way. A process that dies first leaves those logs as they are; that is all it costs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import zlib
from collections import defaultdict
from collections.abc import Sequence

import orjson
from sqlalchemy import Connection, bindparam, delete

from app.db import Database
from app.prepared import Prepared
from app.runs.events import BATCH, COMPACTED, EVENT_TABLE, INSERT_EVENT, EventHub, dumps

logger = logging.getLogger("opengrove.runs")

BATCH_RUNS = 64  # runs per transaction
# A batch's run ids are padded to one of these counts (repeating its last), so its DELETE
# has one of two shapes: each shape is a statement the driver prepares once per connection.
_SHAPES = (8, BATCH_RUNS)
_TAKE_LOGS = {
    size: Prepared(
        delete(EVENT_TABLE)
        .where(EVENT_TABLE.c.run_id.in_([bindparam(f"run_{i}") for i in range(size)]))
        .returning(EVENT_TABLE.c.run_id, EVENT_TABLE.c.seq, EVENT_TABLE.c.event, EVENT_TABLE.c.data)
    )
    for size in _SHAPES
}


def compact_logs(conn: Connection, run_ids: Sequence[str]) -> int:
    """Rewrite each run's log as one row (read and deleted in one statement; its rows kept as
    they were: numbers, batches, RESUMED markers, their JSON copied, not parsed). The number
    of logs rewritten."""
    logs: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for start in range(0, len(run_ids), BATCH_RUNS):
        ids = list(run_ids[start : start + BATCH_RUNS])
        size = next(size for size in _SHAPES if size >= len(ids))
        ids += ids[-1:] * (size - len(ids))
        taken = _TAKE_LOGS[size].rows(conn, {f"run_{i}": run_id for i, run_id in enumerate(ids)})
        for run_id, seq, event, data in taken:
            logs[run_id].append((seq, event, data))
    rows = []
    for run_id, log in logs.items():
        log.sort()  # RETURNING's order is unspecified
        if len(log) == 1 and log[0][1] == COMPACTED:  # compacted already: put it back
            seq, event, data = log[0]
        else:
            listed = ",".join(f"[{seq},{dumps(event)},{data}]" for seq, event, data in log)
            blob = base64.b64encode(zlib.compress(f"[{listed}]".encode())).decode()
            last_seq, last_event, last_data = log[-1]  # consecutive numbers, in order
            seq = last_seq + (len(orjson.loads(last_data)) - 1 if last_event == BATCH else 0)
            event, data = COMPACTED, dumps(blob)
        rows.append({"run_id": run_id, "seq": seq, "event": event, "data": data})
    if rows:
        INSERT_EVENT.execute_many(conn, rows, hold=False)
    return len(logs)


class LogCompactor:
    """Compacts the logs of the runs this process ended, a batch every `interval` seconds."""

    def __init__(self, db: Database, hub: EventHub, interval: float = 0.5) -> None:
        self.db = db
        self.hub = hub
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="log-compactor")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.compact_now()

    async def compact_now(self) -> int:
        """Compact what is waiting now; the number of logs rewritten."""
        run_ids = self.hub.take_ended()
        if not run_ids:
            return 0
        try:
            return await self.db.transact(compact_logs, run_ids)
        except Exception:
            # Left as they are: an uncompacted log replays the same.
            logger.exception("compacting %d run event logs failed", len(run_ids))
            return 0

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.compact_now()
