"""Database engine, sessions and the declarative base shared by every domain."""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Integer,
    Select,
    String,
    create_engine,
    event,
    or_,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    AsyncAdapt_aiosqlite_ss_cursor,
)
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.util import greenlet_spawn

from app.ids import next_seq, now
from app.prepared import before_statement, deferring

T = TypeVar("T")
SQLITE_CONNECTIONS = 4
# Names this process in the NOTIFYs its connections cause (PostgreSQL: the run_events
# trigger reads it as the `opengrove.sender` setting), so it can ignore its own.
PROCESS_TOKEN = secrets.token_hex(4)

# JSONB on PostgreSQL (indexable, compact), plain JSON text on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")


def one_of(column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
    """`column IN values` for a small fixed set, written as ORs. An IN of a list is an
    "expanding" parameter that SQLAlchemy renders again on every execution (and every length
    is another prepared statement); ORs compile once and stay in the statement cache."""
    return or_(*(column == value for value in values))


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# JSON columns through orjson: several times faster than the json module both ways (a page
# of 20 messages decodes 60 JSON values); the stored text is the same JSON, written compact.
_JSON_CODEC: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSONType, list[Any]: JSONType}


class OpenAIObjectMixin:
    """Columns every OpenAI object has: its id, created_at, and the list sort key."""

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    seq: Mapped[int] = mapped_column(BigInteger, default=next_seq)

    def __init__(self, **kwargs: Any) -> None:
        # Set now, not at flush: objects are rendered into events before they are flushed.
        kwargs.setdefault("created_at", now())
        kwargs.setdefault("seq", next_seq())
        super().__init__(**kwargs)


class ProjectOwned:
    """Top-level objects (assistants, threads, files, vector stores, runs) belong to the
    project of the key that made them; every query on them names the project."""

    project_id: Mapped[str] = mapped_column(String(64))


class Database:
    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if not self.is_sqlite:
            # At most 3 x pool_size connections, as before, and each stays open once load has
            # opened it: none in overflow. An overflow connection was closed when returned,
            # and at 50 streams that was one new connection per dozen runs, each a backend
            # PostgreSQL forks, asyncpg's type introspection and every statement prepared
            # again; a request beyond the pool waits for a connection instead, a round trip
            # or so. No pre-ping: with asyncpg it is three round trips (BEGIN, ping,
            # ROLLBACK) per checkout. A connection found dead fails its request and
            # invalidates the whole pool, so after a database restart one request per
            # process fails, instead of every request paying for it.
            kwargs.update(
                pool_size=pool_size * 3,
                max_overflow=0,
                pool_timeout=60,
                # The most recently used connection first: under light load a few connections
                # serve everything, each with its statements already prepared (asyncpg
                # prepares a statement once per connection: a round trip, and planning). A
                # FIFO pool rotated through all of them, preparing everything on each.
                pool_use_lifo=True,
                # No JIT: a new connection's first act is asyncpg's type introspection, a
                # query PostgreSQL's JIT compiled every time (asyncpg#530): ~0.1 s of the
                # database's CPU per connection opened. The hot path's statements are far
                # too small for JIT to pay either.
                connect_args={"server_settings": {"opengrove.sender": PROCESS_TOKEN, "jit": "off"}},
            )
        else:
            # aiosqlite runs each connection in a thread of its own, and SQLite takes one
            # writer at a time: more connections only add threads fighting for the GIL and
            # writers sleeping in SQLite's busy handler. Measured (bench/runs_bench.py,
            # bench/crud_bench.py, c=50): 2-4 connections serve best, 30 a third less. A
            # fixed pool: a request beyond them waits for one, in the pool's queue.
            kwargs.update(
                connect_args={"timeout": 30},  # busy timeout: wait for another writer, 30 s
                module=_OneTripDBAPI(),
                pool_size=SQLITE_CONNECTIONS,
                max_overflow=0,
                pool_timeout=60,
            )
        self.engine: AsyncEngine = create_async_engine(url, **kwargs, **_JSON_CODEC)
        # PostgreSQL's `transact` runs in autocommit: reads need no BEGIN and COMMIT (under
        # READ COMMITTED every statement takes its own snapshot anyway), and writes begin a
        # transaction only when they must (app.prepared.deferring).
        self._autocommit: AsyncEngine = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            # A statement sent through SQLAlchemy inside `transact` comes after the INSERTs
            # held before it, inside the transaction when it needs one (app.prepared).
            event.listen(self.engine.sync_engine, "before_execute", before_statement)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self._group: GroupCommit | None = None
        if self.is_sqlite:
            # aiosqlite hops to its thread several times per statement; a whole transaction
            # of Core statements in one hop costs a third of the CPU (see `transact`).
            sync_engine = create_engine(
                url.replace("sqlite+aiosqlite://", "sqlite://"),
                connect_args={"timeout": 30},
                **_JSON_CODEC,
            )
            event.listen(sync_engine, "connect", _sqlite_pragmas)
            self._group = GroupCommit(sync_engine)

    async def transact(self, work: Callable[..., T], *args: Any, writes: bool = True) -> T:
        """Run `work(connection, *args)` — synchronous Core statements — in one transaction,
        committed when it returns. The hot paths use this: on SQLite in one trip to a
        database thread, sharing its commit with the others waiting then (`GroupCommit`); on
        PostgreSQL through asyncpg as usual, and work that only reads (`writes=False`) in
        autocommit, each statement on its own."""
        if self._group is not None:
            return await self._group.run(work, args, writes)
        # The whole transaction (checkout, statements, commit, checkin) in one greenlet, the
        # bridge `run_sync` uses: `async with engine.begin()` and `run_sync` took three, about
        # 0.12 ms of CPU per transaction more.
        return await greenlet_spawn(self._transact_in_greenlet, work, args, writes)

    def _transact_in_greenlet(
        self, work: Callable[..., T], args: tuple[Any, ...], writes: bool
    ) -> T:
        with self._autocommit.sync_engine.connect() as conn:
            if not writes:
                return work(conn, *args)
            with deferring(conn):  # begins the transaction itself, when it must
                return work(conn, *args)

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._group is not None:
            self._group.close()

    async def ping(self) -> None:
        """Raise if the database cannot be reached (for /health)."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def lease(
        self, key: Any, candidates: Select[Any], values: dict[str, Any], returning: Sequence[Any]
    ) -> list[Any]:
        """Lease rows for this process: UPDATE the `candidates` (a SELECT of `key`) with
        `values`, commit, and return the `returning` columns of the rows leased.

        On PostgreSQL, other processes' leases in flight are skipped, never waited on
        (`FOR UPDATE SKIP LOCKED`); SQLite serialises writers, so one UPDATE is atomic.
        """
        if not self.is_sqlite:
            candidates = candidates.with_for_update(skip_locked=True)
        async with self.sessionmaker() as session:
            result = await session.execute(
                update(key.class_)
                .where(key.in_(candidates.scalar_subquery()))
                .values(**values)
                .returning(*returning)
                .execution_options(synchronize_session=False)
            )
            rows = list(result.tuples())
            await session.commit()
        return rows


@dataclass
class _Submitted:
    work: Callable[..., Any]
    args: tuple[Any, ...]
    writes: bool
    future: asyncio.Future[Any]


class GroupCommit:
    """SQLite transactions in one database thread, with group commit: the transactions
    submitted while the thread is busy run next as one batch, each in a savepoint of its own,
    under one `BEGIN IMMEDIATE … COMMIT`.

    SQLite takes one writer at a time anyway, so nothing that could run in parallel waits
    longer; what a batch saves is a commit (the WAL write of every page touched), a BEGIN and
    a thread hand-off per transaction, and pages several transactions touch are written once.
    A transaction that raises is rolled back to its savepoint and raises to its caller; the
    others commit. Results are handed back only after the COMMIT: nothing is announced that
    could still be lost. A caller cancelled before its batch starts is skipped.
    """

    MAX_BATCH = 64  # bounds how long one batch holds the write lock

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite")
        self._queue: deque[_Submitted] = deque()
        self._busy = False
        # The thread's own connection, kept: a pool checkout and return per batch cost as
        # much as a small transaction.
        self._connection: Connection | None = None

    async def run(self, work: Callable[..., T], args: tuple[Any, ...], writes: bool) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Submitted(work, args, writes, future))
        if not self._busy:
            self._start()
        return await future

    def close(self) -> None:
        self._thread.submit(self._close_connection).result()
        self._thread.shutdown(wait=True)
        self.engine.dispose()

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _start(self) -> None:
        """On the event loop: hand the waiting transactions to the thread as one batch."""
        batch: list[_Submitted] = []
        while self._queue and len(batch) < self.MAX_BATCH:
            item = self._queue.popleft()
            if not item.future.cancelled():
                batch.append(item)
        if not batch:
            return
        self._busy = True
        done = asyncio.get_running_loop().run_in_executor(self._thread, self._execute, batch)
        done.add_done_callback(lambda finished: self._finish(batch, finished))

    def _finish(self, batch: list[_Submitted], finished: asyncio.Future[list[Any]]) -> None:
        self._busy = False
        error = finished.exception()
        # The batch as a whole failed (BEGIN, COMMIT, a lone transaction): so did each.
        outcomes = finished.result() if error is None else [_Failed(error)] * len(batch)
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.future.cancelled():
                continue
            if isinstance(outcome, _Failed):
                item.future.set_exception(outcome.error)
            else:
                item.future.set_result(outcome)
        if self._queue:
            self._start()

    def _execute(self, batch: list[_Submitted]) -> list[Any]:
        """In the database thread: the batch in one transaction; each item's result, or its
        error as `_Failed`."""
        outcomes: list[Any] = []
        if self._connection is None or self._connection.invalidated:
            self._close_connection()
            self._connection = self.engine.connect()
        conn = self._connection
        with conn.begin():
            if any(item.writes for item in batch):
                # Take the write lock up front: a transaction that reads first and writes
                # later can fail outright (SQLITE_BUSY) when another connection wrote between.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            if len(batch) == 1:  # alone: its error rolls the transaction back, no savepoint
                item = batch[0]
                return [item.work(conn, *item.args)]
            # Savepoints on the sqlite3 connection itself: SQLAlchemy's `begin_nested` compiles
            # its SAVEPOINT and RELEASE anew each time, which doubled an item's cost.
            sqlite = conn.connection.dbapi_connection
            assert sqlite is not None
            for item in batch:
                sqlite.execute("SAVEPOINT batch_item")
                try:
                    outcomes.append(item.work(conn, *item.args))
                except Exception as error:
                    sqlite.execute("ROLLBACK TO batch_item")
                    outcomes.append(_Failed(error))
                sqlite.execute("RELEASE batch_item")
        return outcomes


@dataclass
class _Failed:
    error: BaseException


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Foreign keys give us OpenAI's delete cascades; WAL lets readers run beside the writer;
    # synchronous=NORMAL in WAL mode never corrupts (a power cut may lose the last commits,
    # a crash of the process none); the rest keeps hot pages and temporary tables in memory.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.execute("PRAGMA cache_size=-16384")  # 16 MiB of page cache per connection
    # No memory map: every page read through one stays mapped, once per connection, so the
    # process's RSS grew with the database (+13 % over a 5-minute soak; +5 % without), and
    # reads through the page cache measured no slower.
    cursor.execute("PRAGMA mmap_size=0")
    # After a checkpoint the WAL file is cut back to this (it otherwise stays as large as it
    # ever grew, e.g. after a burst).
    cursor.execute("PRAGMA journal_size_limit=67108864")
    cursor.close()


# ---------------------------------------------------------------------------- SQLite driver
# SQLAlchemy's aiosqlite adapter makes four trips to the connection's thread per statement
# (cursor, execute, fetchall, close), each a hand-off of the GIL and a wake-up of the event
# loop. These subclasses make it one trip, and skip the trip of a rollback with nothing to
# roll back (the pool's reset after every commit). Same results, same exceptions.


def _run_statement(conn: Any, operation: Any, parameters: Any) -> tuple[Any, list[Any], int, int]:
    """In the connection's thread: one statement, its rows fetched, its cursor closed."""
    cursor = conn._conn.cursor()
    try:
        cursor.execute(operation, () if parameters is None else parameters)
        if cursor.description:
            return cursor.description, cursor.fetchall(), -1, -1
        return None, [], cursor.lastrowid, cursor.rowcount
    finally:
        cursor.close()


class _OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        try:
            description, rows, lastrowid, rowcount = self.await_(
                self._connection._execute(_run_statement, self._connection, operation, parameters)
            )
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        self.description = description
        self.lastrowid, self.rowcount = lastrowid, rowcount
        self._rows = deque(rows)


class _OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()

    def cursor(self, server_side: bool = False) -> Any:
        if server_side:
            return AsyncAdapt_aiosqlite_ss_cursor(self)
        return _OneTripCursor(self)

    def _idle(self) -> bool:
        conn = self._connection._connection  # the sqlite3 connection; None once closed
        return conn is not None and not conn.in_transaction

    def rollback(self) -> None:
        if not self._idle():
            super().rollback()

    def commit(self) -> None:
        if not self._idle():
            super().commit()

    @property
    def isolation_level(self) -> Any:
        return self._connection.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: Any) -> None:
        # Between statements (never during one), and outside a transaction (SQLAlchemy sets
        # it at checkout and checkin), so no trip: it only changes whether pysqlite will BEGIN.
        conn = self._connection._connection
        if conn is None or conn.in_transaction:
            AsyncAdapt_aiosqlite_connection.isolation_level.fset(self, value)  # type: ignore[attr-defined]
        else:
            conn.isolation_level = value


class _OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def __init__(self) -> None:
        import sqlite3

        import aiosqlite

        super().__init__(aiosqlite, sqlite3)

    def connect(self, *arg: Any, **kw: Any) -> Any:
        connection = super().connect(*arg, **kw)
        if type(connection) is AsyncAdapt_aiosqlite_connection:
            return _OneTripConnection(self, connection._connection)
        return connection  # the sync fallback (not used by the app)
