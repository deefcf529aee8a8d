"""Database engine, sessions and the declarative base shared by every domain."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Integer,
    Select,
    String,
    create_engine,
    event,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.ids import next_seq, now

T = TypeVar("T")

# JSONB on PostgreSQL (indexable, compact), plain JSON text on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")


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


class Database:
    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if not self.is_sqlite:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size * 2, pool_pre_ping=True)
        else:
            kwargs.update(connect_args={"timeout": 30})
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self._sqlite_sync = None
        self._sqlite_thread: ThreadPoolExecutor | None = None
        if self.is_sqlite:
            # aiosqlite hops to its thread several times per statement; a whole transaction
            # of Core statements in one hop costs a third of the CPU (see `transact`).
            self._sqlite_sync = create_engine(
                url.replace("sqlite+aiosqlite://", "sqlite://"), connect_args={"timeout": 30}
            )
            event.listen(self._sqlite_sync, "connect", _sqlite_pragmas)
            self._sqlite_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite")

    async def transact(self, work: Callable[..., T], *args: Any, writes: bool = True) -> T:
        """Run `work(connection, *args)` — synchronous Core statements — in one transaction,
        committed when it returns. The hot paths use this: on SQLite the whole transaction
        runs in one trip to a database thread; on PostgreSQL through asyncpg as usual."""
        if self._sqlite_sync is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._sqlite_thread, self._sqlite_work, work, args, writes
            )
        async with self.engine.begin() as conn:
            return await conn.run_sync(work, *args)

    def _sqlite_work(self, work: Callable[..., T], args: tuple[Any, ...], writes: bool) -> T:
        assert self._sqlite_sync is not None
        with self._sqlite_sync.begin() as conn:
            if writes:
                # Take the write lock up front: a transaction that reads first and writes
                # later can fail outright (SQLITE_BUSY) when another connection wrote between.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            return work(conn, *args)

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._sqlite_sync is not None:
            self._sqlite_sync.dispose()
        if self._sqlite_thread is not None:
            self._sqlite_thread.shutdown(wait=True)

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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Foreign keys give us OpenAI's delete cascades; WAL lets readers run beside the writer.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
