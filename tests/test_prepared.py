"""`app.prepared`: hot-path statements sent through the driver's cursor read and write what
SQLAlchemy's own execution would, on the test database (SQLite, or PostgreSQL in CI)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from app.db import Database
from app.ids import new_id, next_seq, now
from app.llm.adapter import RetryPolicy
from app.llm.routing import ModelRouter
from app.migrate import upgrade_database
from app.prepared import (
    GuardMissed,
    Prepared,
    defer_update,
    insert_row,
    plain_insert,
    update_rows,
)
from app.runs import store
from app.runs.compaction import compact_logs
from app.runs.dispatch import RunDispatcher
from app.runs.events import EVENT_TABLE, EventHub, EventWriter
from app.runs.execution import ExecutionContext, RunExecution
from app.runs.worker import RunWorker
from tests.databases import fresh_database

THREADS = store.MESSAGES.metadata.tables["threads"]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fresh_database(tmp_path_factory.mktemp("prepared")) as database_url:
        asyncio.run(upgrade_database(database_url))
        yield database_url


@pytest.fixture
async def db(url: str) -> AsyncIterator[Database]:
    database = Database(url)
    try:
        yield database
    finally:
        await database.dispose()


def _thread(conn: Connection, metadata: dict[str, str] | None = None) -> str:
    thread_id = new_id("thread_")
    values = {"id": thread_id, "project_id": "proj", "tool_resources": {}}
    insert_row(conn, THREADS, {**values, "metadata": metadata or {}})
    return thread_id


async def test_rows_written_and_read_as_sqlalchemy_would(db: Database) -> None:
    thread_id = await db.transact(_thread, {"k": "v"})
    run = store.Row(id=new_id("run_"))
    values = {
        "project_id": "proj",
        "thread_id": thread_id,
        "assistant_id": "asst_x",
        "status": "queued",
        "model": "m",
        "instructions": "",
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "metadata_": {},
        "temperature": 0.5,
        "usage": None,
        "created_at": now(),
        "seq": next_seq(),
    }
    store.fill_run(run, values)
    await db.transact(store.insert_run, run)

    def read_back(conn: Connection) -> tuple[object, object, object]:
        through_sqlalchemy = conn.execute(select(store.RUNS).where(store.RUNS.c.id == run.id))
        expected = dict(through_sqlalchemy.mappings().one())
        loaded = store.load_run(conn, run.id)
        thread = conn.execute(select(THREADS.c.metadata).where(THREADS.c.id == thread_id))
        return expected, loaded, thread.scalar_one()

    expected, loaded, thread_metadata = await db.transact(read_back, writes=False)
    assert loaded is not None
    assert {store._RUN_ATTRS[k]: v for k, v in expected.items()} == vars(loaded)  # type: ignore[union-attr]
    assert loaded.tools == values["tools"] and loaded.temperature == 0.5
    assert loaded.next_event_seq == 0 and loaded.usage is None  # a default; SQL NULL
    assert thread_metadata == {"k": "v"}

    moved = await db.transact(store.transition, run, "in_progress", {"started_at": 5})
    assert moved and run.status == "in_progress"
    again = await db.transact(store.transition, run, "in_progress", {"started_at": 6})
    assert not again and run.started_at == 5  # refused: the row as stored was read back

    def count_updates(conn: Connection) -> tuple[int, int]:
        hit = update_rows(conn, store.RUNS, "id", run.id, {"usage": {"total_tokens": 3}})
        miss = update_rows(conn, store.RUNS, "id", "run_missing", {"usage": {}})
        return hit, miss

    assert await db.transact(count_updates) == (1, 0)
    stored = await db.transact(store.load_run, run.id, writes=False)
    assert stored is not None and stored.usage == {"total_tokens": 3}


async def test_a_duplicate_key_raises_sqlalchemys_integrity_error(db: Database) -> None:
    thread_id = await db.transact(_thread)

    def duplicate(conn: Connection) -> None:
        insert_row(conn, THREADS, {"id": thread_id, "project_id": "p", "tool_resources": {}})

    with pytest.raises(IntegrityError):
        await db.transact(duplicate)
    assert await db.transact(_thread)  # the database goes on serving


async def test_event_log_written_many_at_once_and_compacted(db: Database) -> None:
    """Logs are written many rows at once, and compacted in batches: more runs than one
    batch holds, and counts that pad to each of its statement shapes."""
    thread_id = await db.transact(_thread)
    hub = EventHub(compaction=True)
    run_ids = []
    for i in range(70):  # 64 + 6: one full batch, one padded
        run = store.Row(id=new_id("run_"))
        values = {"project_id": "p", "thread_id": thread_id, "status": "completed", "model": "m"}
        store.fill_run(run, {**values, "assistant_id": "a", "created_at": now(), "seq": next_seq()})
        await db.transact(store.insert_run, run)
        run_ids.append(run.id)
        writer = EventWriter(hub, run.id, 0)
        for n in range(4 + i % 3):
            writer.emit("thread.run.step.delta", {"n": n})
        writer.emit("thread.run.completed", {"id": run.id})
        await db.transact(writer.write)
        writer.published()
    assert hub.take_ended() == run_ids  # each writer told the hub its run ended
    log_of = {run_id: 5 + i % 3 for i, run_id in enumerate(run_ids)}

    def log(conn: Connection, run_id: str) -> list[tuple[int, str]]:
        rows = conn.execute(
            select(EVENT_TABLE.c.seq, EVENT_TABLE.c.event).where(EVENT_TABLE.c.run_id == run_id)
        )
        return sorted((seq, event) for seq, event in rows.tuples())

    first = run_ids[0]
    assert [seq for seq, _ in await db.transact(log, first, writes=False)] == [0, 1, 2, 3, 4]
    assert await db.transact(compact_logs, run_ids) == 70
    for run_id, count in log_of.items():
        assert await db.transact(log, run_id, writes=False) == [(count - 1, "compacted")]
    # Again: a compacted log stays as it is; a few runs pad to the small shape.
    assert await db.transact(compact_logs, run_ids[:3]) == 3
    assert await db.transact(log, first, writes=False) == [(4, "compacted")]


def _messages_of(thread_id: str) -> object:
    return select(store.MESSAGES.c.id).where(store.MESSAGES.c.thread_id == thread_id)


def _message(thread_id: str) -> dict[str, object]:
    return {
        "id": new_id("msg_"),
        "thread_id": thread_id,
        "role": "user",
        "content": [],
        "status": "completed",
        "attachments": [],
        "metadata": {},
    }


async def test_held_writes_land_together_and_in_order(db: Database) -> None:
    """Inside `transact`, PostgreSQL holds INSERTs and sends consecutive ones as one
    statement (`app.prepared.deferring`). A thread and its messages (foreign keys between
    them) land; a statement after them, prepared or through SQLAlchemy, sees them."""

    def write_and_read(conn: Connection) -> tuple[str, int, int]:
        thread_id = _thread(conn)
        for _ in range(3):
            insert_row(conn, store.MESSAGES, _message(thread_id))
        seen_by_sqlalchemy = len(conn.execute(_messages_of(thread_id)).all())  # type: ignore[call-overload]
        insert_row(conn, store.MESSAGES, _message(thread_id))
        updated = update_rows(conn, store.MESSAGES, "thread_id", thread_id, {"status": "x"})
        insert_row(conn, store.MESSAGES, _message(thread_id))  # held until the end
        return thread_id, seen_by_sqlalchemy, updated

    thread_id, seen, updated = await db.transact(write_and_read)
    assert (seen, updated) == (3, 4)

    def statuses(conn: Connection) -> list[str]:
        query = select(store.MESSAGES.c.status).where(store.MESSAGES.c.thread_id == thread_id)
        return sorted(conn.execute(query).scalars().all())

    assert await db.transact(statuses, writes=False) == ["completed"] + ["x"] * 4


async def test_a_held_update_waits_for_the_writes_it_must_see(db: Database) -> None:
    """A held UPDATE joins the statement of the writes held before it only if none of them
    writes its table (sub-statements share one snapshot); otherwise they go first."""

    def write(conn: Connection) -> tuple[str, str]:
        thread_id = _thread(conn, {"v": "1"})
        defer_update(conn, THREADS, "id", thread_id, {"metadata": {"v": "2"}})  # after it
        message = _message(thread_id)
        insert_row(conn, store.MESSAGES, message)
        defer_update(conn, THREADS, "id", thread_id, {"metadata": {"v": "3"}})  # held
        defer_update(conn, store.MESSAGES, "id", message["id"], {"status": "x"})  # after it
        return thread_id, message["id"]

    thread_id, message_id = await db.transact(write)

    def state(conn: Connection) -> tuple[object, object]:
        metadata = conn.execute(select(THREADS.c.metadata).where(THREADS.c.id == thread_id))
        status = conn.execute(
            select(store.MESSAGES.c.status).where(store.MESSAGES.c.id == message_id)
        )
        return metadata.scalar_one(), status.scalar_one()

    assert await db.transact(state, writes=False) == ({"v": "3"}, "x")


async def test_a_held_write_that_fails_rolls_the_transaction_back(db: Database) -> None:
    taken = await db.transact(_thread)
    fresh = new_id("thread_")

    def two_threads(conn: Connection) -> None:
        insert_row(conn, THREADS, {"id": fresh, "project_id": "p", "tool_resources": {}})
        insert_row(conn, THREADS, {"id": taken, "project_id": "p", "tool_resources": {}})

    with pytest.raises(IntegrityError):
        await db.transact(two_threads)

    def exists(conn: Connection) -> bool:
        return conn.execute(select(THREADS.c.id).where(THREADS.c.id == fresh)).first() is not None

    assert not await db.transact(exists, writes=False)


async def test_a_failed_transaction_leaves_nothing_and_no_open_transaction(db: Database) -> None:
    """PostgreSQL's `transact` begins its transaction itself, only when it must; whatever
    fails, nothing it wrote stays and its connection goes back to the pool outside any
    transaction."""
    thread_id = await db.transact(_thread, {"v": "1"})

    class Refused(Exception):
        pass

    def update_then_fail(conn: Connection) -> None:
        update_rows(conn, THREADS, "id", thread_id, {"metadata": {"v": "2"}})
        raise Refused

    def hold_read_then_fail(conn: Connection) -> None:
        message = _message(thread_id)
        insert_row(conn, store.MESSAGES, message)
        assert conn.execute(_messages_of(thread_id)).all()  # type: ignore[call-overload]
        raise Refused

    def update_then_write_a_duplicate(conn: Connection) -> None:
        update_rows(conn, THREADS, "id", thread_id, {"metadata": {"v": "3"}})
        insert_row(conn, THREADS, {"id": thread_id, "project_id": "p", "tool_resources": {}})

    for work in (update_then_fail, hold_read_then_fail):
        with pytest.raises(Refused):
            await db.transact(work)
    # The held write fails at the end, inside the transaction the update began.
    with pytest.raises(IntegrityError):
        await db.transact(update_then_write_a_duplicate)

    def state(conn: Connection) -> tuple[object, int, bool]:
        metadata = conn.execute(select(THREADS.c.metadata).where(THREADS.c.id == thread_id))
        messages = conn.execute(_messages_of(thread_id)).all()  # type: ignore[call-overload]
        if conn.dialect.name == "postgresql":
            open_transaction = conn.connection.driver_connection.is_in_transaction()  # type: ignore[union-attr]
        else:
            open_transaction = conn.connection.dbapi_connection.in_transaction  # type: ignore[union-attr]
        return metadata.scalar_one(), len(messages), open_transaction

    # Twice: a fresh connection, and (most recently used first) the one that just failed.
    for _ in range(2):
        assert await db.transact(state, writes=False) == ({"v": "1"}, 0, False)


def _queued_run(conn: Connection) -> store.Row:
    run = store.Row(id=new_id("run_"))
    values = {
        "project_id": "proj",
        "thread_id": _thread(conn),
        "assistant_id": "asst_x",
        "status": "queued",
        "model": "m",
        "instructions": "",
        "tools": [],
        "metadata_": {},
        "created_at": now(),
        "seq": next_seq(),
    }
    store.fill_run(run, values)
    store.insert_run(conn, run)
    return run


def _event(run_id: str, seq: int) -> dict[str, object]:
    return {"run_id": run_id, "seq": seq, "event": "thread.run.in_progress", "data": "{}"}


async def test_a_held_transition_guards_the_writes_after_it(db: Database) -> None:
    """`store.transition(held=True)`: on PostgreSQL the UPDATE is held as the guard of the
    INSERTs after it (one statement); when it matches no row, nothing of the transaction is
    written and `GuardMissed` says so (on SQLite it runs at once and returns False)."""
    run = await db.transact(_queued_run)
    insert_event = Prepared(plain_insert(EVENT_TABLE), ("run_id", "seq", "event", "data"))

    def move(conn: Connection, to: str, then_read: bool) -> bool:
        if not store.transition(conn, run, to, {"started_at": 7}, held=True):
            return False
        first = 0 if to == "in_progress" else 10
        insert_event.execute_many(conn, [_event(run.id, first), _event(run.id, first + 1)])
        # An UPDATE of another table is held and guarded too.
        defer_update(conn, THREADS, "id", run.thread_id, {"metadata": {"moved": to}})
        if then_read:  # a statement after the guard: it runs first, in a transaction
            assert store.load_run(conn, run.id) is not None
            # The guard's own table: runs after it (one row, one change per statement).
            store.update_run(conn, run.id, {"usage": {"total_tokens": 5}})
        insert_row(
            conn,
            THREADS,
            {
                "id": new_id("thread_"),
                "project_id": "guarded",
                "tool_resources": {},
                "metadata": {},
            },
        )
        return True

    missed: list[bool] = []

    async def attempt(to: str, then_read: bool = False) -> bool:
        try:
            return await db.transact(move, to, then_read)
        except GuardMissed:
            missed.append(then_read)
            return False

    def written(conn: Connection) -> tuple[str, int, int, object, object]:
        status = conn.execute(
            select(store.RUNS.c.status, store.RUNS.c.usage).where(store.RUNS.c.id == run.id)
        ).one()
        events = conn.execute(select(EVENT_TABLE.c.seq).where(EVENT_TABLE.c.run_id == run.id))
        threads = conn.execute(select(THREADS.c.id).where(THREADS.c.project_id == "guarded"))
        metadata = conn.execute(select(THREADS.c.metadata).where(THREADS.c.id == run.thread_id))
        return status[0], len(events.all()), len(threads.all()), metadata.scalar_one(), status[1]

    # requires_action is reachable from in_progress only: the guard matches nothing.
    for then_read in (False, True):
        assert not await attempt("requires_action", then_read)
        assert await db.transact(written, writes=False) == ("queued", 0, 0, {}, None)
    assert await attempt("in_progress")
    moved = {"moved": "in_progress"}
    assert await db.transact(written, writes=False) == ("in_progress", 2, 1, moved, None)
    assert run.status == "in_progress" and run.started_at == 7
    # Missed again (in_progress → in_progress is no transition), after a read this time.
    assert not await attempt("in_progress", then_read=True)
    assert await db.transact(written, writes=False) == ("in_progress", 2, 1, moved, None)
    # Matched, with statements after it: the run's own UPDATE comes after the guard.
    assert await attempt("requires_action", then_read=True)
    assert await db.transact(written, writes=False) == (
        "requires_action",
        4,
        2,
        {"moved": "requires_action"},
        {"total_tokens": 5},
    )
    # PostgreSQL held the guard each time (its misses were raised); SQLite ran it at once.
    assert missed == ([] if db.is_sqlite else [False, True, True])


async def test_a_run_cancelled_before_the_executor_starts_it(db: Database) -> None:
    """The executor's `advance` to in_progress holds the transition as the guard of its
    event: when the run was cancelled meanwhile, it reports False with nothing written,
    nothing published, and the run as stored (on every database)."""
    run = await db.transact(_queued_run)
    await db.transact(store.update_run, run.id, {"status": "cancelling", "next_event_seq": 2})
    hub = EventHub()
    context = ExecutionContext(
        db=db,
        hub=hub,
        router=ModelRouter(),
        tools={},
        policy=RetryPolicy(),
        max_run_steps=1,
        expiry_seconds=60,
        images=None,  # type: ignore[arg-type]  # no prompt here has images
    )
    run.next_event_seq = 2
    execution = RunExecution(context, run, asyncio.Event())
    queue = hub.subscribe(run.id)
    started = await execution.advance(
        "in_progress", "thread.run.in_progress", read_prompt=True, started_at=now()
    )
    assert not started
    assert run.status == "cancelling" and run.started_at is None  # reloaded
    assert execution.writer.seq == 2 and execution._prompt is None
    assert queue.empty()

    def log(conn: Connection) -> list[int]:
        query = select(EVENT_TABLE.c.seq).where(EVENT_TABLE.c.run_id == run.id)
        return list(conn.execute(query).scalars())

    assert await db.transact(log, writes=False) == []
    # The stored numbering never goes back (SQLite, where the transition ran at once, may
    # have reserved numbers ahead as before; PostgreSQL wrote nothing).
    stored = await db.transact(store.load_run, run.id, writes=False)
    assert stored is not None and stored.next_event_seq >= 2
    if not db.is_sqlite:
        assert stored.next_event_seq == 2


async def test_a_worker_does_not_claim_a_run_it_is_executing(db: Database) -> None:
    """A run whose lease lapsed while its worker still executes it (an event loop starved
    past the lease) is not taken again by that worker: it would run twice. Another worker,
    or this one once the run is no longer executing here, takes it, as an interruption."""
    run = await db.transact(_queued_run)
    context = ExecutionContext(
        db=db,
        hub=EventHub(),
        router=ModelRouter(),
        tools={},
        policy=RetryPolicy(),
        max_run_steps=1,
        expiry_seconds=60,
        images=None,  # type: ignore[arg-type]
    )
    worker = RunWorker(db, RunDispatcher(), context, concurrency=4, lease_seconds=30)
    lapsed = {"status": "in_progress", "lease_owner": worker.worker_id, "lease_expires_at": 1.0}
    await db.transact(store.update_run, run.id, lapsed)
    executing = asyncio.get_running_loop().create_future()
    worker._tasks[run.id] = executing  # type: ignore[assignment]
    assert await worker.claim(10) == []
    del worker._tasks[run.id]
    executing.cancel()
    assert await worker.claim(10) == [run.id]
    reloaded = await db.transact(store.load_run, run.id, writes=False)
    assert reloaded is not None and reloaded.interruptions == 1
