"""The database a test session runs on: a fresh SQLite file, or a fresh PostgreSQL database.

Set OPENGROVE_TEST_DATABASE_URL (e.g. postgresql://postgres@127.0.0.1:5432/test) to run
the suite on PostgreSQL. An unreachable server is an error, never a skip.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(_plain(url), timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def fresh_database(tmp: Path) -> Iterator[str]:
    """Yield an async SQLAlchemy URL for an empty database that is dropped afterwards."""
    server_url = os.environ.get("OPENGROVE_TEST_DATABASE_URL")
    if not server_url:
        yield f"sqlite+aiosqlite:///{tmp / 'test.db'}"
        return
    name = f"opengrove_test_{secrets.token_hex(6)}"
    parts = urlsplit(_plain(server_url))
    try:
        asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(
            f"PostgreSQL at {parts.hostname}:{parts.port} is unreachable ({exc!r}); "
            "OPENGROVE_TEST_DATABASE_URL is set, so the suite must run on it."
        ) from exc
    url = urlunsplit(parts._replace(path=f"/{name}"))
    try:
        yield url.replace("postgresql://", "postgresql+asyncpg://")
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def backend_name() -> str:
    return "postgresql" if os.environ.get("OPENGROVE_TEST_DATABASE_URL") else "sqlite"
