"""Run events as data: numbered, persisted to `run_events`, delivered to subscribers.

Writers (the API when it creates, cancels or resumes a run; the executor while it holds the
run's lease) number a run's events from `runs.next_event_seq` and persist them in the same
transaction as the state they announce, then publish them to subscribers in this process.
Token deltas are published at once and persisted at the next commit, in one row per commit
(a batch), so a late subscriber replays exactly the events a live one saw.

The executor publishes deltas before persisting them, so it first reserves a block of
numbers on the run row: if its process dies, the run resumes numbering past the block and
writes a `RESUMED` marker there, and subscribers skip the numbers the lost attempt used.

Soon after a run ends, its whole log is rewritten as one `COMPACTED` row
(`app.runs.compaction`): every row it had, with its numbers, compressed (a token delta costs
a few bytes instead of ~200, a run one row instead of dozens). Compaction is lossless: a replay,
with or without Last-Event-ID, is the stream live subscribers saw, ids included, so an id
that fell inside a batch of deltas still resumes right after that delta. Logs of runs that
ended long ago are deleted (`app.runs.retention`); a stream of such a run gets its final
event alone.

How the events reach streams (following a run, the log watcher, PostgreSQL's LISTEN) is
`app.runs.delivery`.
"""

from __future__ import annotations

import asyncio
import base64
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.prepared import Prepared, plain_insert
from app.runs import store
from app.runs.models import Run, RunEvent

# PostgreSQL NOTIFY channels, sent by triggers: new run_events (migration 0007), and a run
# that becomes queued (0008). Payload: "<sending process token>:<run id>".
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
# An ended run's whole log in one row, numbered as its last event: data is the base64 of the
# zlib-compressed JSON list of the rows it replaced, [[seq, event, data], ...].
COMPACTED = "compacted"
RESERVE_BLOCK = 512  # delta numbers reserved ahead of publishing
RUN_TABLE: Table = Run.__table__  # type: ignore[assignment]
EVENT_TABLE: Table = RunEvent.__table__  # type: ignore[assignment]
INSERT_EVENT = Prepared(plain_insert(EVENT_TABLE), ("run_id", "seq", "event", "data"))
# A stream this many events behind (its client reads slowly) catches up from the log instead:
# what a slow client costs in memory is bounded.
MAX_QUEUED = 1024


def dumps(data: Any) -> str:
    return orjson.dumps(data).decode()


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    event: str
    data: Any


WAKE = Event(-1, "", None)  # "look at the log": something was persisted elsewhere


class EventHub:
    """In-process fan-out of run events to the streams subscribed to them.

    Each stream has a queue. One that falls `MAX_QUEUED` events behind (its client reads
    slowly) has its queue emptied and is told to catch up from the log. For each run with
    streams the hub keeps a cursor: the last event published to them (by a writer here, or
    by the `LogWatcher`), where the watcher reads the log on from.
    """

    def __init__(self, *, compaction: bool = False, send_timeout: float | None = None) -> None:
        self._queues: dict[str, set[asyncio.Queue[Event]]] = defaultdict(set)
        self._local: set[str] = set()  # runs a worker in this process is about to execute
        self._cursor: dict[str, int] = {}
        self.compaction = compaction  # rewrite a run's log as one row when it ends
        self._ended: list[str] = []  # runs whose logs are whole, to compact
        self.send_timeout = send_timeout  # seconds a stream waits for a client to read
        self.log_reads = 0  # times a stream read the log itself (to start, or to catch up)
        self.overflows = 0  # times a stream fell MAX_QUEUED events behind

    def executing_here(self, run_id: str, here: bool = True) -> None:
        """A worker in this process takes (or lets go of) the run: its events arrive here
        first, so the watcher need not look at its log often."""
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
                self._cursor.pop(run_id, None)

    def position(self, run_id: str, seq: int) -> None:
        """A stream of the run has, or has queued, every event up to `seq` (its first read
        of the log): the watcher reads on from there, unless it already reads from earlier
        for the run's other streams."""
        if run_id in self._queues:
            self._cursor.setdefault(run_id, seq)

    def cursor(self, run_id: str) -> int | None:
        return self._cursor.get(run_id)

    def followed(self) -> dict[str, int]:
        """Runs with streams here, and where the watcher reads their logs from."""
        return dict(self._cursor)

    def publish(self, run_id: str, events: list[Event]) -> None:
        queues = self._queues.get(run_id)
        if not queues or not events:
            return
        top = max(event.seq for event in events)
        if top > self._cursor.get(run_id, -1):
            self._cursor[run_id] = top
        for queue in queues:
            if queue.qsize() + len(events) > MAX_QUEUED:
                # Far behind: drop what it holds; it reads the log from where it is instead.
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(WAKE)
                self.overflows += 1
                continue
            for event in events:
                queue.put_nowait(event)

    def ended(self, run_id: str) -> None:
        """A writer here persisted the run's last events."""
        self._ended.append(run_id)

    def take_ended(self) -> list[str]:
        ended, self._ended = self._ended, []
        return ended

    def wake(self, run_id: str) -> None:
        """Every stream of the run reads the log."""
        for queue in self._queues.get(run_id, ()):
            queue.put_nowait(WAKE)

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

    def write(self, conn: Connection) -> None:
        """Persist pending events inside the caller's transaction (any thread); `published`
        must follow once it commits."""
        self._flush_deltas_into_state()
        rows = self._state
        if rows:
            INSERT_EVENT.execute_many(
                conn,
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
            store.update_run(conn, self.run_id, {"next_event_seq": wanted})
        self._written = (len(rows), wanted)

    def published(self) -> None:
        """The transaction that `write` joined committed: publish its events."""
        count, self.stored_next = self._written
        self._written = (0, self.stored_next)
        rows, self._state = self._state[:count], self._state[count:]
        if self.hub.compaction and any(e.event in ENDED_EVENTS for e in rows):
            self.hub.ended(self.run_id)  # its log is whole: compact it (app.runs.compaction)
        published = [e for e in rows if e.event not in (BATCH, RESUMED)] + self._held
        self._held = []
        published.sort(key=lambda e: e.seq)
        self.hub.publish(self.run_id, published)
        self.last_published = published

    async def commit(self, session: AsyncSession) -> None:
        """Persist pending events with the session's changes, commit, then publish."""
        await session.flush()  # the rows the events refer to go first
        await session.run_sync(lambda sync: self.write(sync.connection()))
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


def _events_of(seq: int, event: str, data: Any) -> Iterator[Event]:
    """The events one log row holds (`data` parsed)."""
    if event == BATCH:
        for i, (name, payload) in enumerate(data):
            yield Event(seq + i, name, payload)
    elif event == COMPACTED:
        for row in orjson.loads(zlib.decompress(base64.b64decode(data))):
            yield from _events_of(*row)
    else:
        yield Event(seq, event, data)


def expand_rows(rows: list[tuple[int, str, str]]) -> list[Event]:
    return [e for seq, event, data in rows for e in _events_of(seq, event, orjson.loads(data))]


def event_rows(conn: Connection, run_id: str, after_seq: int) -> list[tuple[int, str, str]]:
    """The log rows holding the events after `after_seq`."""
    # The row holding after_seq may be a batch that holds later events too: start there.
    # (A compacted log is one row numbered as its last event: found either way.)
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
