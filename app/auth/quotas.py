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
    await session.execute(update(Project).where(Project.id == project_id).values(name=Project.name))


class OpenStreams:
    """SSE streams open in this process, by project, against the `open_streams` quota."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def reserve(self, project_id: str, limit: int | None) -> StreamSlot:
        """A slot for one stream, taken now (429 when the project has none left); the
        stream releases it when it ends, or the caller when no stream starts after all."""
        count = self._open.get(project_id, 0)
        if limit is not None and count >= limit:
            raise QuotaExceeded("open streams", limit)
        self._open[project_id] = count + 1
        return StreamSlot(self, project_id)

    def count(self, project_id: str) -> int:
        return self._open.get(project_id, 0)

    def _release(self, project_id: str) -> None:
        left = self._open.get(project_id, 0) - 1
        if left > 0:
            self._open[project_id] = left
        else:
            self._open.pop(project_id, None)


class StreamSlot:
    def __init__(self, streams: OpenStreams, project_id: str) -> None:
        self._streams: OpenStreams | None = streams
        self._project_id = project_id

    def release(self) -> None:  # idempotent: the stream's end and an error path may both call
        if self._streams is not None:
            self._streams._release(self._project_id)
            self._streams = None


class ProjectLimits:
    """The quotas of the caller's project, as a route needs them."""

    def __init__(self, caller: Caller, settings: Settings, streams: OpenStreams) -> None:
        self.caller = caller
        self.settings = settings
        self.streams = streams

    @property
    def active_runs(self) -> int | None:
        return quota(self.caller, self.settings, "active_runs")

    def stream_slot(self, wanted: bool | None) -> StreamSlot | None:
        """A stream slot when the request streams (429 when none is left), else None."""
        if not wanted:
            return None
        limit = quota(self.caller, self.settings, "open_streams")
        return self.streams.reserve(self.caller.project_id, limit)
