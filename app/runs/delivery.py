"""How run events reach streams: a stream follows its run through the hub, and reads the
log only to start and to fill a gap.

Streams never read the log on a timer. One `LogWatcher` per process reads it for every run
a stream here follows and publishes what other processes wrote to those streams: woken by
PostgreSQL NOTIFY (`PostgresListener`, and every 2 s in case one was lost); on SQLite, which
has no such signal, it polls — one query per tick, however many streams are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
from sqlalchemy import Connection, func, select

from app.db import PROCESS_TOKEN, Database
from app.runs import store
from app.runs.events import (
    ENDED_EVENTS,
    EVENT_TABLE,
    FINAL_EVENTS,
    RESUMED,
    WAKE,
    Event,
    EventHub,
    event_rows,
    expand_rows,
)
from app.runs.models import TERMINAL_STATUSES
from app.runs.schemas import render_run

logger = logging.getLogger("opengrove.events")

EVENTS_CHANNEL = "opengrove_run_events"  # NOTIFY of run_events rows (migration 0007)
RUNS_CHANNEL = "opengrove_runs"  # NOTIFY of queued runs (migration 0008)
WATCH_SECONDS_SQLITE = 0.2  # how stale a stream of another process's run may be, on SQLite
WATCH_SECONDS_POSTGRES = 2.0  # NOTIFY wakes the watcher at once; this is in case one is lost
LOCAL_POLL_SECONDS = 5.0  # runs executed here publish here first: look at their log this seldom
WATCH_CHUNK = 500  # runs per query


async def load_events(db: Database, run_id: str, after_seq: int) -> list[Event]:
    rows = await db.transact(event_rows, run_id, after_seq, writes=False)
    return [e for e in expand_rows(rows) if e.seq > after_seq]


def _after_the_log(conn: Connection, run_id: str, seq: int) -> list[Event] | None:
    """A stream found no event after `seq` in the log. What follows: nothing ([]) if the log
    ends with the run's end; if the log was pruned (an ended run's, long ago), the run's
    final event (its number kept: the run's last); None if events are still to come."""
    rows = event_rows(conn, run_id, seq)
    if rows:
        return [] if expand_rows(rows)[-1].event in ENDED_EVENTS else None
    run = store.load_run(conn, run_id)
    if run is None or run.status not in TERMINAL_STATUSES:
        return None
    final = run.next_event_seq - 1
    return [Event(final, f"thread.run.{run.status}", render_run(run))] if final > seq else []


async def follow(
    db: Database,
    hub: EventHub,
    run_id: str,
    after_seq: int = -1,
    known: list[Event] | None = None,
) -> AsyncIterator[list[Event]]:
    """Every event of the run after `after_seq`, in order, until a final event — in batches
    of what is at hand, so a stream writes several events at once when it can. `known`:
    the run's first events, when the caller has them (a stream of a run it just created).

    Events arrive through the hub: from the run's writer when it runs here, from the
    `LogWatcher` when it runs elsewhere. The stream reads the log itself only to start, and
    to fill a gap (events published before it subscribed, or dropped when it fell behind)."""
    queue = hub.subscribe(run_id)
    last = max(after_seq, -1)  # -1: from the start
    try:
        if known:
            pending = known
        else:
            hub.log_reads += 1
            pending = await load_events(db, run_id, last)
            if not pending:
                rest = await db.transact(_after_the_log, run_id, last, writes=False)
                if rest is not None:
                    if rest:
                        yield rest
                    return  # nothing will follow
        hub.position(run_id, max([last, *(e.seq for e in pending)]))
        while True:
            ready: list[Event] = []
            final = False
            for item in pending:
                if item.seq <= last:
                    continue
                if item.event == RESUMED:
                    last = item.seq  # the numbers before it belonged to a lost attempt
                    continue
                if item.seq != last + 1:
                    break  # not persisted yet: wait for the log to catch up
                last = item.seq
                ready.append(item)
                if item.event in FINAL_EVENTS:
                    final = True
                    break
            if ready:
                yield ready
            if final:
                return
            arrived = [await queue.get()]
            while not queue.empty():
                arrived.append(queue.get_nowait())
            first = arrived[0]
            if any(item is WAKE for item in arrived) or (
                first.seq > last + 1 and first.event != RESUMED
            ):
                # Published before we subscribed, or dropped while we were behind: the log
                # has them.
                hub.log_reads += 1
                pending = await load_events(db, run_id, last)
                known_seqs = {e.seq for e in pending}
                pending += [e for e in arrived if e is not WAKE and e.seq not in known_seqs]
                pending.sort(key=lambda e: e.seq)
            else:
                pending = arrived
    finally:
        hub.unsubscribe(run_id, queue)


def _new_rows(conn: Connection, cursors: dict[str, int]) -> dict[str, list[tuple[int, str, str]]]:
    """For each run, the log rows past its cursor (runs whose log has none: absent)."""
    found: dict[str, list[tuple[int, str, str]]] = {}
    run_ids = list(cursors)
    for start in range(0, len(run_ids), WATCH_CHUNK):
        chunk = run_ids[start : start + WATCH_CHUNK]
        tops = conn.execute(
            select(EVENT_TABLE.c.run_id, func.max(EVENT_TABLE.c.seq))
            .where(EVENT_TABLE.c.run_id.in_(chunk))
            .group_by(EVENT_TABLE.c.run_id)
        )
        # A row past the cursor holds events past it (batches number from their first).
        for run_id, top in list(tops):
            if top is not None and top > cursors[run_id]:
                found[run_id] = event_rows(conn, run_id, cursors[run_id])
    return found


class LogWatcher:
    """The one reader of the log for this process's streams: it looks for rows past each
    followed run's cursor — one query for all of them — and publishes their events to the
    run's streams. Runs executed here publish here first, so their logs are looked at only
    every LOCAL_POLL_SECONDS (in case another process took the run over)."""

    def __init__(self, db: Database, hub: EventHub, interval: float | None = None) -> None:
        self.db = db
        self.hub = hub
        self.interval = interval or (
            WATCH_SECONDS_SQLITE if db.is_sqlite else WATCH_SECONDS_POSTGRES
        )
        self.polls = 0  # looks at the log (one transaction each)
        self.fanned_out = 0  # events it published to streams
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._last_local = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def notify(self, run_id: str) -> None:
        """Another process wrote events of this run (PostgreSQL NOTIFY)."""
        self._dirty.add(run_id)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="event-log-watcher")

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while not self._stopped:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            self._wake.clear()
            try:
                await self.check()
            except Exception:
                logger.exception("reading the event log for streams failed")

    async def check(self) -> None:
        dirty, self._dirty = self._dirty, set()
        local_due = time.monotonic() - self._last_local >= LOCAL_POLL_SECONDS
        if local_due:
            self._last_local = time.monotonic()
        cursors = {
            run_id: cursor
            for run_id, cursor in self.hub.followed().items()
            if local_due or run_id in dirty or not self.hub.is_local(run_id)
        }
        if not cursors:
            return
        self.polls += 1
        found = await self.db.transact(_new_rows, cursors, writes=False)
        for run_id, rows in found.items():
            cursor = self.hub.cursor(run_id)  # a writer here may have published meanwhile
            if cursor is None:
                continue  # its streams are gone
            events = [e for e in expand_rows(rows) if e.seq > cursor]
            self.fanned_out += len(events)
            self.hub.publish(run_id, events)


class PostgresListener:
    """One LISTEN connection per process: other processes' events and runs wake us."""

    def __init__(
        self, url: str, on_events: Callable[[str], None], on_run_queued: Callable[[], None]
    ) -> None:
        self.url = url.replace("postgresql+asyncpg://", "postgresql://")
        self.on_events = on_events
        self.on_run_queued = on_run_queued
        self._conn: asyncpg.Connection | None = None

    async def start(self) -> None:
        self._conn = await asyncpg.connect(self.url)
        await self._conn.add_listener(EVENTS_CHANNEL, self._on_event)
        await self._conn.add_listener(RUNS_CHANNEL, self._on_run)

    def _on_event(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        sender, _, run_id = payload.partition(":")
        if sender != PROCESS_TOKEN:  # our own events reached our subscribers already
            self.on_events(run_id)

    def _on_run(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if not payload.startswith(PROCESS_TOKEN + ":"):
            self.on_run_queued()  # another process's run: claim it if we have room

    async def stop(self) -> None:
        if self._conn is not None:
            await self._conn.close()
