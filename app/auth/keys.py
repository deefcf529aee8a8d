"""Projects and API keys: create, list, revoke, and verify a presented key (no HTTP here)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import DEFAULT_PROJECT_ID, DEFAULT_PROJECT_NAME, ApiKey, Project
from app.config import Settings
from app.db import Database
from app.errors import InvalidRequest, NotFound
from app.ids import new_id, now

KEY_PREFIX = "sk-og-"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def redact(key: str) -> str:
    return f"{key[: len(KEY_PREFIX)]}…{key[-4:]}"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)  # 256 random bits


@dataclass(frozen=True)
class Caller:
    """Who is asking: the project every object of the request belongs to, and the key."""

    project_id: str
    project_name: str
    key_id: str | None  # None: no keys exist and the server accepts anyone (loopback)
    settings: dict[str, Any] = field(default_factory=dict)  # the project's overrides

    @property
    def models(self) -> list[str] | None:
        """The project's model allowlist; None: the server's configured models and aliases."""
        return self.settings.get("models")


ANONYMOUS = Caller(DEFAULT_PROJECT_ID, DEFAULT_PROJECT_NAME, None)


async def ensure_project(session: AsyncSession, name: str) -> Project:
    project = await session.scalar(select(Project).where(Project.name == name))
    if project is not None:
        return project
    project = Project(
        id=DEFAULT_PROJECT_ID if name == DEFAULT_PROJECT_NAME else new_id("proj_"),
        name=name,
        created_at=now(),
        settings={},
    )
    session.add(project)
    try:
        await session.flush()
    except IntegrityError:  # made concurrently by another process
        await session.rollback()
        return await get_project(session, name)
    return project


async def get_project(session: AsyncSession, name_or_id: str) -> Project:
    project = await session.scalar(
        select(Project).where((Project.name == name_or_id) | (Project.id == name_or_id))
    )
    if project is None:
        raise NotFound("project", name_or_id)
    return project


async def create_key(
    session: AsyncSession, project_name: str, name: str | None = None, key: str | None = None
) -> tuple[ApiKey, str]:
    """A new key for the project (made if missing): the row and the key, shown only now.
    `key` adopts a key chosen elsewhere (a deployment's bootstrap secret)."""
    if key is not None and len(key) < 32:
        raise InvalidRequest("A key must have at least 32 characters.", param="key")
    key = key or new_key()
    project = await ensure_project(session, project_name)
    row = ApiKey(
        id=new_id("key_"),
        project_id=project.id,
        name=name,
        digest=digest(key),
        redacted=redact(key),
        created_at=now(),
    )
    session.add(row)
    await session.commit()
    return row, key


async def list_keys(session: AsyncSession) -> list[tuple[ApiKey, Project]]:
    result = await session.execute(
        select(ApiKey, Project)
        .join(Project, Project.id == ApiKey.project_id)
        .order_by(Project.name, ApiKey.created_at)
    )
    return [(key, project) for key, project in result.tuples()]


async def revoke_key(session: AsyncSession, key_id: str) -> None:
    result = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now())
    )
    if result.rowcount == 0:
        raise NotFound("active key", key_id)
    await session.commit()


async def has_digest(session: AsyncSession, key_digest: str) -> bool:
    return await session.scalar(select(ApiKey.id).where(ApiKey.digest == key_digest)) is not None


async def adopt_bootstrap_key(db: Database, settings: Settings) -> None:
    """The deployment's bootstrap key (OPENGROVE_BOOTSTRAP_KEY or _FILE) exists after start."""
    key = settings.bootstrap_key
    if settings.bootstrap_key_file is not None:
        key = settings.bootstrap_key_file.read_text().strip()
    if not key:
        return
    async with db.sessionmaker() as session:
        if await has_digest(session, digest(key)):
            return
        try:
            await create_key(session, settings.bootstrap_project, "bootstrap", key)
        except IntegrityError:  # another process adopted it first
            await session.rollback()


class KeyRing:
    """Verifies presented keys against the database, remembering answers for `ttl` seconds
    so a request costs a dictionary lookup, not a query. A key revoked elsewhere (the CLI,
    another process) stops working within `ttl`."""

    MAX_REMEMBERED = 10_000

    def __init__(self, db: Database, ttl: float) -> None:
        self.db = db
        self.ttl = ttl
        self._known: dict[str, tuple[float, Caller | None]] = {}
        self._any_keys: tuple[float, bool] = (0.0, False)
        self._any_keys_lock = asyncio.Lock()

    async def any_keys(self) -> bool:
        """Whether any active key exists (then every request needs one)."""
        checked, exists = self._any_keys
        if time.monotonic() - checked < self.ttl:
            return exists
        # One query when the answer expires, not one per request arriving meanwhile.
        async with self._any_keys_lock:
            checked, exists = self._any_keys
            if time.monotonic() - checked < self.ttl:
                return exists
            async with self.db.sessionmaker() as session:
                count = await session.scalar(
                    select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))
                )
            exists = bool(count)
            self._any_keys = (time.monotonic(), exists)
            return exists

    async def verify(self, key: str) -> Caller | None:
        """The caller a key belongs to, or None for a wrong or revoked key."""
        key_digest = digest(key)
        remembered = self._known.get(key_digest)
        if remembered is not None and time.monotonic() - remembered[0] < self.ttl:
            return remembered[1]
        caller = await self._lookup(key_digest)
        if len(self._known) >= self.MAX_REMEMBERED:
            self._known.clear()  # wrong keys sprayed at us must not grow memory
        self._known[key_digest] = (time.monotonic(), caller)
        return caller

    async def _lookup(self, key_digest: str) -> Caller | None:
        async with self.db.sessionmaker() as session:
            row = (
                await session.execute(
                    select(ApiKey, Project)
                    .join(Project, Project.id == ApiKey.project_id)
                    .where(ApiKey.digest == key_digest, ApiKey.revoked_at.is_(None))
                )
            ).first()
        # The index found the row by digest; compare again in constant time anyway, so
        # no timing difference depends on how much of a guess was right.
        if row is None or not hmac.compare_digest(row[0].digest, key_digest):
            return None
        key, project = row
        return Caller(project.id, project.name, key.id, dict(project.settings or {}))
