"""Run events as data: numbered, persisted to `run_events`, delivered to subscribers.

Writers (the API when it creates or resumes a run, the executor while it holds the run's
lease) number a run's events and persist them in the same transaction as the state they
announce, then publish them to subscribers in this process at once. Token deltas are
published at once and persisted at the next commit. Subscribers in other processes read
the log, woken by PostgreSQL NOTIFY (or by polling on SQLite).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import Database
from app.runs.models import RunEvent

logger = logging.getLogger("opengrove.events")

EVENTS_CHANNEL = "opengrove_run_events"
RUNS_CHANNEL = "opengrove_runs"
# A stream ends after any of these (then `done`).
FINAL_EVENTS = frozenset(
    {
        "thread.run.completed",
        "thread.run.failed",
        "thread.run.cancelled",
        "thread.run.expired",
        "thread.run.incomplete",
        "thread.run.requires_action",
    }
)


@dataclass(frozen=True)
class Event:
    seq: int
    event: str
    data: Any


_WAKE = Event(-1, "", None)  # "look at the log": something was persisted elsewhere
PROCESS_TOKEN = secrets.token_hex(4)  # tells this process's NOTIFYs from other processes'


class EventHub:
    """In-process fan-out of run events to the streams subscribed to them."""

    def __init__(self) -> None:
        self._queues: dict[str, set[asyncio.Queue[Event]]] = defaultdict(set)
        self._run_listeners: list[Callable[[str], None]] = []
        self._cancel_listeners: list[Callable[[str], None]] = []
        self._local_worker: Callable[[Any], bool] | None = None
        self._withdraw: Callable[[str], None] | None = None

    def subscribe(self, run_id: str) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._queues[run_id].add(queue)
        return queue

    def unsubscribe(self, run_id: str, queue: asyncio.Queue[Event]) -> None:
        queues = self._queues.get(run_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._queues[run_id]

    def publish(self, run_id: str, events: list[Event]) -> None:
        for queue in self._queues.get(run_id, ()):
            for event in events:
                queue.put_nowait(event)

    def wake(self, run_id: str) -> None:
        self.publish(run_id, [_WAKE])

    def on_run_queued(self, callback: Callable[[str], None]) -> None:
        self._run_listeners.append(callback)

    def run_queued(self, run_id: str = "") -> None:
        for callback in self._run_listeners:
            callback(run_id)

    def set_local_worker(
        self, take: Callable[[Any], bool], withdraw: Callable[[str], None]
    ) -> None:
        self._local_worker = take
        self._withdraw = withdraw

    def offer(self, run: Any) -> bool:
        """Lease a run to this process's executor before it is first committed, sparing the
        claim round trip; it starts on `run_queued(run.id)` after the commit. False when
        there is no executor here or it is full."""
        return self._local_worker(run) if self._local_worker is not None else False

    def withdraw(self, run_id: str) -> None:
        """The offered run was never committed."""
        if self._withdraw is not None:
            self._withdraw(run_id)

    def on_cancel_requested(self, callback: Callable[[str], None]) -> None:
        self._cancel_listeners.append(callback)

    def cancel_requested(self, run_id: str) -> None:
        for callback in self._cancel_listeners:
            callback(run_id)


async def next_seq(session: AsyncSession, run_id: str) -> int:
    last = await session.scalar(select(func.max(RunEvent.seq)).where(RunEvent.run_id == run_id))
    return 0 if last is None else last + 1


class EventWriter:
    """Numbers one run's events; persists them with the caller's transaction."""

    def __init__(self, hub: EventHub, run_id: str, first_seq: int) -> None:
        self.hub = hub
        self.run_id = run_id
        self.seq = first_seq
        self._unpersisted: list[Event] = []
        self._unpublished: list[Event] = []

    @classmethod
    async def resume(cls, hub: EventHub, session: AsyncSession, run_id: str) -> EventWriter:
        return cls(hub, run_id, await next_seq(session, run_id))

    def _new(self, event: str, data: Any) -> Event:
        item = Event(self.seq, event, data)
        self.seq += 1
        self._unpersisted.append(item)
        return item

    def emit(self, event: str, data: Any) -> None:
        """A state event: published after the transaction that persists it commits."""
        self._unpublished.append(self._new(event, data))

    def emit_delta(self, event: str, data: Any) -> None:
        """A token delta: published now, persisted with the next commit."""
        self.hub.publish(self.run_id, [self._new(event, data)])

    @property
    def has_unpersisted(self) -> bool:
        return bool(self._unpersisted)

    async def commit(self, session: AsyncSession, *, run_queued: bool = False) -> None:
        """Persist pending events with the session's changes, commit, then publish."""
        if self._unpersisted:
            # One executemany, no RETURNING: far cheaper than adding ORM rows one by one.
            await session.execute(
                insert(RunEvent),
                [
                    {"run_id": self.run_id, "seq": e.seq, "event": e.event, "data": e.data}
                    for e in self._unpersisted
                ],
            )
        if session.bind.dialect.name == "postgresql":
            # Delivered by PostgreSQL on commit, to every process listening (ours included;
            # the payload names the sender so this process can ignore its own).
            notices = []
            if self._unpersisted:
                notices.append(func.pg_notify(EVENTS_CHANNEL, f"{PROCESS_TOKEN}:{self.run_id}"))
            if run_queued:
                notices.append(func.pg_notify(RUNS_CHANNEL, f"{PROCESS_TOKEN}:{self.run_id}"))
            if notices:
                await session.execute(select(*notices))
        await session.commit()
        self._unpersisted.clear()
        published, self._unpublished = self._unpublished, []
        self.hub.publish(self.run_id, published)
        if run_queued:
            self.hub.run_queued(self.run_id)


async def load_events(db: Database, run_id: str, after_seq: int) -> list[Event]:
    async with db.sessionmaker() as session:
        rows = (
            await session.execute(
                select(RunEvent.seq, RunEvent.event, RunEvent.data)
                .where(RunEvent.run_id == run_id, RunEvent.seq > after_seq)
                .order_by(RunEvent.seq)
            )
        ).all()
    return [Event(seq, event, data) for seq, event, data in rows]


async def follow(
    db: Database, hub: EventHub, run_id: str, after_seq: int = -1
) -> AsyncIterator[Event]:
    """Every event of the run after `after_seq`, in order, until a final event."""
    # PostgreSQL wakes us when another process writes; SQLite has no such signal.
    poll_interval = 0.2 if db.is_sqlite else 2.0
    queue = hub.subscribe(run_id)
    last = after_seq
    try:
        pending = await load_events(db, run_id, last)
        while True:
            for item in pending:
                if item.seq != last + 1:
                    continue
                last = item.seq
                yield item
                if item.event in FINAL_EVENTS:
                    return
            try:
                item = await asyncio.wait_for(queue.get(), timeout=poll_interval)
            except TimeoutError:
                item = _WAKE
            if item is _WAKE or item.seq > last + 1:
                # Written by another process, or we missed some: the log has them.
                pending = await load_events(db, run_id, last)
                if item is not _WAKE and item.seq > last + 1 and item not in pending:
                    pending.append(item)
                    pending.sort(key=lambda e: e.seq)
            else:
                pending = [item]
    finally:
        hub.unsubscribe(run_id, queue)


class PostgresListener:
    """One LISTEN connection per process, turning NOTIFYs into hub wake-ups."""

    def __init__(self, url: str, hub: EventHub) -> None:
        self.url = url.replace("postgresql+asyncpg://", "postgresql://")
        self.hub = hub
        self._conn: asyncpg.Connection | None = None

    async def start(self) -> None:
        self._conn = await asyncpg.connect(self.url)
        await self._conn.add_listener(EVENTS_CHANNEL, self._on_event)
        await self._conn.add_listener(RUNS_CHANNEL, self._on_run)

    def _on_event(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        sender, _, run_id = payload.partition(":")
        if sender != PROCESS_TOKEN:  # our own events reached our subscribers already
            self.hub.wake(run_id)

    def _on_run(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if not payload.startswith(PROCESS_TOKEN + ":"):
            self.hub.run_queued()  # another process's run: claim it if we have room

    async def stop(self) -> None:
        if self._conn is not None:
            await self._conn.close()
