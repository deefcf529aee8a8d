"""Per-project quotas: stored bytes, active runs, open streams.

A project's own figure (`opengrove projects set NAME --quota …`) wins over the server's
default (OPENGROVE_QUOTA_*); None means unlimited. Refusals are 429 `insufficient_quota`,
as OpenAI answers a spent quota, and are made before anything is written.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.keys import Caller
from app.auth.models import Project
from app.config import Settings
from app.errors import APIError

QuotaName = Literal["stored_bytes", "active_runs", "open_streams"]


def quota(caller: Caller, settings: Settings, name: QuotaName) -> int | None:
    own = (caller.settings.get("quotas") or {}).get(name, ...)
    if own is not ...:
        return own
    return getattr(settings, f"quota_{name}")


class QuotaExceeded(APIError):
    def __init__(self, what: str, limit: int) -> None:
        super().__init__(
            429,
            f"You exceeded your project's quota of {limit} {what}. Free some up, or ask the "
            "operator to raise it (`opengrove projects set NAME --quota …`).",
            type="insufficient_quota",
            code="insufficient_quota",
        )


async def lock_project(session: AsyncSession, project_id: str) -> None:
    """Hold the project's row lock until the transaction ends (PostgreSQL), or the write
    lock (SQLite): a quota check and the insert it allows happen as one, per project."""
    await session.execute(
        update(Project).where(Project.id == project_id).values(name=Project.name)
    )
