"""SQLite group commit (`app.db.GroupCommit`): transactions waiting together share one
commit, yet each succeeds or fails on its own, on a real SQLite database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, event, text

from app.db import Database


class Refused(Exception):
    pass


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'group.db'}")
    await database.transact(
        lambda conn: conn.exec_driver_sql("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    )
    try:
        yield database
    finally:
        await database.dispose()


def _insert(conn: Connection, k: int, fail: bool = False) -> int:
    conn.execute(text("INSERT INTO t (k, v) VALUES (:k, 'x')"), {"k": k})
    if fail:
        raise Refused(f"row {k}")
    return k * 10


def _keys(conn: Connection) -> list[int]:
    return [k for (k,) in conn.execute(text("SELECT k FROM t ORDER BY k"))]


async def test_waiting_transactions_share_a_commit_and_fail_alone(db: Database) -> None:
    assert db._group is not None
    commits: list[int] = []
    event.listen(db._group.engine, "commit", lambda _conn: commits.append(1))
    outcomes = await asyncio.gather(
        *(db.transact(_insert, k, k == 7) for k in range(30)), return_exceptions=True
    )
    assert [o for o in outcomes if isinstance(o, BaseException)] == [outcomes[7]]
    assert isinstance(outcomes[7], Refused) and str(outcomes[7]) == "row 7"
    assert [o for i, o in enumerate(outcomes) if i != 7] == [k * 10 for k in range(30) if k != 7]
    # The failed one was rolled back to its savepoint; everything else committed.
    assert await db.transact(_keys, writes=False) == [k for k in range(30) if k != 7]
    assert 1 < len(commits) < 30  # batched: the first alone, the rest together


async def test_a_lone_failure_rolls_back_and_the_next_runs(db: Database) -> None:
    with pytest.raises(Refused):
        await db.transact(_insert, 1, True)
    assert await db.transact(_insert, 2) == 20
    assert await db.transact(_keys, writes=False) == [2]


async def test_a_caller_cancelled_before_its_batch_is_skipped(db: Database) -> None:
    def slow(conn: Connection) -> None:
        _insert(conn, 1)
        time.sleep(0.3)  # holds the database thread: what follows waits in the queue

    busy = asyncio.ensure_future(db.transact(slow))
    await asyncio.sleep(0.05)
    waiting = asyncio.ensure_future(db.transact(_insert, 2))
    await asyncio.sleep(0)
    waiting.cancel()
    after = asyncio.ensure_future(db.transact(_insert, 3))
    await busy
    assert await after == 30
    assert waiting.cancelled()
    assert await db.transact(_keys, writes=False) == [1, 3]
