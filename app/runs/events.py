"""Run events as data: numbered, persisted to `run_events`, delivered to subscribers.

Writers (the API when it creates, cancels or resumes a run; the executor while it holds the
run's lease) number a run's events from `runs.next_event_seq` and persist them in the same
transaction as the state they announce, then publish them to subscribers in this process.
Token deltas are published at once and persisted at the next commit, in one row per commit
(a batch), so a late subscriber replays exactly the events a live one saw.

The executor publishes deltas before persisting them, so it first reserves a block of
numbers on the run row: if its process dies, the run resumes numbering past the block and
writes a `RESUMED` marker there, and subscribers skip the numbers the lost attempt used.
Subscribers in other processes read the log, woken by PostgreSQL NOTIFY (polling on SQLite).
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
import orjson
from sqlalchemy import Connection, Table, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import Database
from app.runs.models import Run, RunEvent

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
# The run's end: nothing ever follows these (a run at requires_action goes on).
ENDED_EVENTS = FINAL_EVENTS - {"thread.run.requires_action"}
BATCH = "batch"  # a row holding consecutive deltas: data is [[event, data], ...]
RESUMED = "resumed"  # a resumed run continues here; numbers before it may be unused
RESERVE_BLOCK = 512  # delta numbers reserved ahead of publishing
RUN_TABLE: Table = Run.__table__  # type: ignore[assignment]
EVENT_TABLE: Table = RunEvent.__table__  # type: ignore[assignment]
LOCAL_POLL_SECONDS = 5.0  # a stream of a run executed here looks at the log this seldom


def dumps(data: Any) -> str:
    return orjson.dumps(data).decode()


@dataclass(frozen=True, slots=True)
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
        self._local: set[str] = set()  # runs a worker in this process is about to execute

    def executing_here(self, run_id: str, here: bool = True) -> None:
        """A worker in this process takes (or lets go of) the run: its events arrive here
        first, so streams need not poll the log for them."""
        if here:
            self._local.add(run_id)
        else:
            self._local.discard(run_id)

    def is_local(self, run_id: str) -> bool:
        return run_id in self._local

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

    @property
    def subscriber_count(self) -> int:
        return sum(len(queues) for queues in self._queues.values())


class EventWriter:
    """Numbers one run's events; persists them with the caller's transaction.

    `reserving` writers (the executor) publish deltas before they are persisted, inside a
    block of numbers reserved on the run row; others keep `runs.next_event_seq` exact.
    """

    def __init__(
        self, hub: EventHub, run_id: str, next_seq: int, *, reserving: bool = False
    ) -> None:
        self.hub = hub
        self.run_id = run_id
        self.seq = next_seq
        self.reserving = reserving
        self.stored_next = next_seq  # runs.next_event_seq as this writer last wrote it
        self._state: list[Event] = []  # persisted with their row, published after commit
        self._deltas: list[Event] = []  # published already (or held: past the reservation)
        self._held: list[Event] = []
        self._written: tuple[int, int] = (0, next_seq)
        self.last_published: list[Event] = []  # what the last commit published

    def _new(self, event: str, data: Any) -> Event:
        item = Event(self.seq, event, data)
        self.seq += 1
        return item

    def emit(self, event: str, data: Any) -> None:
        """A state event: published after the transaction that persists it commits."""
        self._flush_deltas_into_state()
        self._state.append(self._new(event, data))

    def emit_delta(self, event: str, data: Any) -> None:
        """A token delta: published now (within the reservation), persisted at next commit."""
        item = self._new(event, data)
        self._deltas.append(item)
        if self.reserving and item.seq < self.stored_next and not self._held:
            self.hub.publish(self.run_id, [item])
        else:
            self._held.append(item)

    @property
    def has_unpersisted(self) -> bool:
        return bool(self._state or self._deltas)

    @property
    def must_commit(self) -> bool:
        """Deltas wait for a reservation: commit soon."""
        return bool(self._held)

    def _flush_deltas_into_state(self) -> None:
        if self._deltas:
            first = self._deltas[0].seq
            rows = [[d.event, d.data] for d in self._deltas]
            self._state.append(Event(first, BATCH, rows))
            self._deltas = []

    def resumed_marker(self) -> None:
        """Mark where a resumed run's numbering continues (never sent to clients)."""
        self._state.append(self._new(RESUMED, None))

    def write(self, conn: Connection, *, notify_run_queued: bool = False) -> None:
        """Persist pending events inside the caller's transaction (any thread); `published`
        must follow once it commits."""
        self._flush_deltas_into_state()
        rows = self._state
        if rows:
            # One executemany, no RETURNING.
            conn.execute(
                insert(EVENT_TABLE),
                [
                    {"run_id": self.run_id, "seq": e.seq, "event": e.event, "data": dumps(e.data)}
                    for e in rows
                ],
            )
        if self.reserving:
            renew = self.seq + RESERVE_BLOCK // 2 > self.stored_next
            wanted = self.seq + RESERVE_BLOCK if renew else self.stored_next
        else:
            wanted = self.seq
        if wanted != self.stored_next:
            conn.execute(
                update(RUN_TABLE).where(RUN_TABLE.c.id == self.run_id).values(next_event_seq=wanted)
            )
        self._written = (len(rows), wanted)
        if conn.dialect.name == "postgresql":
            # Delivered by PostgreSQL on commit, to every process listening (ours included;
            # the payload names the sender so this process can ignore its own).
            notices = []
            if rows:
                notices.append(func.pg_notify(EVENTS_CHANNEL, f"{PROCESS_TOKEN}:{self.run_id}"))
            if notify_run_queued:
                notices.append(func.pg_notify(RUNS_CHANNEL, f"{PROCESS_TOKEN}:{self.run_id}"))
            if notices:
                conn.execute(select(*notices))

    def published(self) -> None:
        """The transaction that `write` joined committed: publish its events."""
        count, self.stored_next = self._written
        rows, self._state = self._state[:count], self._state[count:]
        published = [e for e in rows if e.event not in (BATCH, RESUMED)] + self._held
        self._held = []
        published.sort(key=lambda e: e.seq)
        self.hub.publish(self.run_id, published)
        self.last_published = published

    async def commit(self, session: AsyncSession, *, notify_run_queued: bool = False) -> None:
        """Persist pending events with the session's changes, commit, then publish."""
        await session.flush()  # the rows the events refer to go first
        await session.run_sync(
            lambda sync: self.write(sync.connection(), notify_run_queued=notify_run_queued)
        )
        await session.commit()
        self.published()

    def discard_unpublished(self) -> None:
        """The transaction rolled back: forget events nobody has seen. Deltas already
        published stay (the log must replay what live subscribers saw)."""
        self._flush_deltas_into_state()
        kept = [e for e in self._state if e.event in (BATCH, RESUMED)]
        dropped = [e for e in self._state if e.event not in (BATCH, RESUMED)] + self._held
        self._held = []
        if not dropped:
            return
        first_dropped = min(e.seq for e in dropped)
        if all(e.seq < first_dropped for e in kept):
            self._state = kept
            self.seq = first_dropped  # numbers stay contiguous: reuse the dropped ones
        # else: a dropped event sits between published ones; keep all rather than leave a gap

    def release(self) -> None:
        """The executor lets go of the run: from now on next_event_seq must be exact."""
        self.reserving = False


def _expand(rows: list[tuple[int, str, str]]) -> list[Event]:
    events: list[Event] = []
    for seq, event, data in rows:
        if event == BATCH:
            events.extend(
                Event(seq + i, name, payload)
                for i, (name, payload) in enumerate(orjson.loads(data))
            )
        else:
            events.append(Event(seq, event, orjson.loads(data)))
    return events


def event_rows(conn: Connection, run_id: str, after_seq: int) -> list[tuple[int, str, str]]:
    """The log rows holding the events after `after_seq`."""
    # The row holding after_seq may be a batch that holds later events too: start there.
    holding = (
        select(func.max(EVENT_TABLE.c.seq))
        .where(EVENT_TABLE.c.run_id == run_id, EVENT_TABLE.c.seq <= after_seq)
        .scalar_subquery()
    )
    query = (
        select(EVENT_TABLE.c.seq, EVENT_TABLE.c.event, EVENT_TABLE.c.data)
        .where(
            EVENT_TABLE.c.run_id == run_id,
            EVENT_TABLE.c.seq >= func.coalesce(holding, after_seq + 1),
        )
        .order_by(EVENT_TABLE.c.seq)
    )
    return [(seq, event, data) for seq, event, data in conn.execute(query)]


async def load_events(db: Database, run_id: str, after_seq: int) -> list[Event]:
    rows = await db.transact(event_rows, run_id, after_seq, writes=False)
    return [e for e in _expand(rows) if e.seq > after_seq]


async def _ended_by(db: Database, run_id: str, seq: int) -> bool:
    """Whether the run's log up to event `seq` ends with the run's end."""
    rows = await db.transact(event_rows, run_id, seq, writes=False)
    return bool(rows) and rows[-1][1] in ENDED_EVENTS


async def follow(
    db: Database,
    hub: EventHub,
    run_id: str,
    after_seq: int = -1,
    known: list[Event] | None = None,
) -> AsyncIterator[list[Event]]:
    """Every event of the run after `after_seq`, in order, until a final event — in batches
    of what is at hand, so a stream writes several events at once when it can. `known`:
    the run's first events, when the caller has them (a stream of a run it just created)."""
    # PostgreSQL wakes us when another process writes; SQLite has no such signal, so a stream
    # polls the log unless a worker of this process executes the run.
    poll_interval = 0.2 if db.is_sqlite else 2.0
    queue = hub.subscribe(run_id)
    last = max(after_seq, -1)  # -1: from the start
    try:
        pending = known if known else await load_events(db, run_id, last)
        if not pending and last >= 0 and await _ended_by(db, run_id, last):
            return  # resumed after the run's last event: nothing will follow
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
            try:
                timeout = LOCAL_POLL_SECONDS if hub.is_local(run_id) else poll_interval
                async with asyncio.timeout(timeout):
                    arrived = [await queue.get()]
            except TimeoutError:
                arrived = [_WAKE]
            while not queue.empty():
                arrived.append(queue.get_nowait())
            if any(item is _WAKE for item in arrived) or arrived[0].seq > last + 1:
                # Written by another process, or we missed some: the log has them.
                pending = await load_events(db, run_id, last)
                known = {e.seq for e in pending}
                pending += [e for e in arrived if e is not _WAKE and e.seq not in known]
                pending.sort(key=lambda e: e.seq)
            else:
                pending = arrived
    finally:
        hub.unsubscribe(run_id, queue)


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
