"""Apply Alembic migrations programmatically, on SQLite and PostgreSQL alike.

A database already at head is the common case on every start, so it is recognised without
importing Alembic (about half a second): the heads come from the revision files' own
`revision`/`down_revision` lines and are compared with the `alembic_version` table.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger("opengrove.migrate")

# Any constant works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK_KEY = 7_214_001


def _script_location() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "migrations", here / "_migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise RuntimeError("Alembic migrations directory not found")


_REVISION_RE = re.compile(r"^(down_revision|revision)\b[^=]*=\s*['\"]?([\w]+|None)", re.M)


def _head_revisions() -> set[str]:
    """Revisions no other revision builds on (the migration scripts' heads)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (_script_location() / "versions").glob("*.py"):
        for name, value in _REVISION_RE.findall(script.read_text()):
            if name == "revision":
                revisions.add(value)
            elif value != "None":
                parents.add(value)
    return revisions - parents


async def _at_head(conn: AsyncConnection) -> bool:
    try:
        rows = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars()
        current = set(rows)
    except DBAPIError:  # no version table yet: a new database
        await conn.rollback()
        return False
    return bool(current) and current == _head_revisions()


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_script_location()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def upgrade_database(url: str, revision: str = "head") -> None:
    engine = create_async_engine(url)
    try:
        if revision == "head":
            async with engine.connect() as conn:
                if await _at_head(conn):
                    return
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Replicas starting together must not run the same migration twice.
                await conn.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})"))
            await conn.run_sync(_upgrade, url, revision)
    finally:
        await engine.dispose()


def _upgrade(connection: Connection, url: str, revision: str) -> None:
    from alembic import command

    cfg = alembic_config(url)
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)
    logger.info("database at revision %s", revision)
