"""Files: the domain logic behind /v1/files (no HTTP here).

Bytes live at `<files dir>/<file id>`; the row is the source of truth. A file is
moved into place before its row commits and removed after its row is deleted, so a
crash can leave an orphaned byte file but never a row without bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.quotas import QuotaExceeded, lock_project
from app.db import Database
from app.errors import InvalidRequest, NotFound
from app.files.models import StoredFile
from app.files.schemas import (
    BATCH_DEFAULT_EXPIRY_SECONDS,
    MAX_EXPIRY_SECONDS,
    MIN_EXPIRY_SECONDS,
    PURPOSES,
)
from app.files.upload import ReceivedForm
from app.ids import new_id, now
from app.pagination import ListParams, Page, paginate
from app.retrieval.index import VectorIndex

logger = logging.getLogger("opengrove.files")

_FORM_FIELDS = {"purpose", "expires_after", "expires_after[anchor]", "expires_after[seconds]"}


def file_path(files_dir: Path, file_id: str) -> Path:
    return files_dir / file_id


def _supported(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    return ", ".join(quoted[:-1]) + f" and {quoted[-1]}"


def _expiry_seconds(fields: dict[str, str]) -> int | None:
    """`expires_after` as the SDK sends it (expires_after[anchor] / [seconds]) or as JSON."""
    if "expires_after" in fields:
        try:
            raw = json.loads(fields["expires_after"])
        except ValueError:
            raise InvalidRequest(
                "Invalid 'expires_after': expected an object with 'anchor' and 'seconds'.",
                param="expires_after",
                code="invalid_type",
            ) from None
        if not isinstance(raw, dict):
            raise InvalidRequest(
                "Invalid 'expires_after': expected an object with 'anchor' and 'seconds'.",
                param="expires_after",
                code="invalid_type",
            )
        anchor, seconds = raw.get("anchor"), raw.get("seconds")
    elif "expires_after[anchor]" in fields or "expires_after[seconds]" in fields:
        anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    else:
        return None
    if anchor is None:
        raise InvalidRequest(
            "Missing required parameter: 'expires_after.anchor'.",
            param="expires_after.anchor",
            code="missing_required_parameter",
        )
    if seconds is None:
        raise InvalidRequest(
            "Missing required parameter: 'expires_after.seconds'.",
            param="expires_after.seconds",
            code="missing_required_parameter",
        )
    if anchor != "created_at":
        raise InvalidRequest(
            f"Invalid value: '{anchor}'. Supported values are: 'created_at'.",
            param="expires_after.anchor",
            code="invalid_value",
        )
    try:
        value = int(str(seconds))
    except ValueError:
        raise InvalidRequest(
            f"Invalid type for 'expires_after.seconds': expected an integer, but got "
            f"'{seconds}' instead.",
            param="expires_after.seconds",
            code="invalid_type",
        ) from None
    if not MIN_EXPIRY_SECONDS <= value <= MAX_EXPIRY_SECONDS:
        op, bound = (
            (">=", MIN_EXPIRY_SECONDS) if value < MIN_EXPIRY_SECONDS else ("<=", MAX_EXPIRY_SECONDS)
        )
        side = "below_min" if value < MIN_EXPIRY_SECONDS else "above_max"
        word = "below minimum" if value < MIN_EXPIRY_SECONDS else "above maximum"
        raise InvalidRequest(
            f"Invalid 'expires_after.seconds': integer {word} value. Expected a value "
            f"{op} {bound}, but got {value} instead.",
            param="expires_after.seconds",
            code=f"integer_{side}_value",
        )
    return value


def validate_form(form: ReceivedForm, limit: int) -> tuple[str, int | None]:
    """(purpose, expiry seconds) of a received upload form, or an OpenAI-shaped 400."""
    for name in form.fields:
        if name not in _FORM_FIELDS:
            raise InvalidRequest(
                f"Unrecognized request argument supplied: {name}",
                param=name,
                code="unknown_parameter",
            )
    purpose = form.fields.get("purpose")
    if purpose is None:
        raise InvalidRequest(
            "Missing required parameter: 'purpose'.",
            param="purpose",
            code="missing_required_parameter",
        )
    if purpose not in PURPOSES:
        raise InvalidRequest(
            f"Invalid value: '{purpose}'. Supported values are: {_supported(PURPOSES)}.",
            param="purpose",
            code="invalid_value",
        )
    seconds = _expiry_seconds(form.fields)
    if form.file is None:
        raise InvalidRequest(
            "Missing required parameter: 'file'.",
            param="file",
            code="missing_required_parameter",
        )
    if form.oversized_bytes is not None:
        raise InvalidRequest(
            f"File is too large: {form.oversized_bytes} bytes is above this server's maximum "
            f"upload size of {limit} bytes.",
            param="file",
            code="file_too_large",
        )
    if seconds is None and purpose == "batch":
        seconds = BATCH_DEFAULT_EXPIRY_SECONDS
    return purpose, seconds


async def stored_bytes(session: AsyncSession, project_id: str) -> int:
    total = await session.scalar(
        select(func.coalesce(func.sum(StoredFile.bytes), 0)).where(
            StoredFile.project_id == project_id
        )
    )
    return int(total or 0)


async def check_room(
    session: AsyncSession, project_id: str, adding: int, quota: int | None
) -> None:
    """429 when `adding` more bytes would take the project past its storage quota."""
    if quota is not None and await stored_bytes(session, project_id) + adding > quota:
        raise QuotaExceeded("bytes of stored files", quota)


async def create_file(
    session: AsyncSession,
    project_id: str,
    files_dir: Path,
    form: ReceivedForm,
    purpose: str,
    expiry_seconds: int | None,
    quota_bytes: int | None,
) -> StoredFile:
    received = form.file
    assert received is not None
    created = now()
    row = StoredFile(
        id=new_id("file-"),
        project_id=project_id,
        created_at=created,
        filename=received.filename,
        purpose=purpose,
        bytes=received.size,
        mime_type=(received.content_type or "")[:256] or None,
        sha256=received.sha256,
        status="processed",
        expires_at=created + expiry_seconds if expiry_seconds is not None else None,
    )
    if quota_bytes is not None:
        # Checked and inserted under the project's write lock: two uploads that each fit
        # cannot both land past the quota. A refused upload leaves nothing behind.
        await lock_project(session, project_id)
        await check_room(session, project_id, received.size, quota_bytes)
    final = file_path(files_dir, row.id)
    await asyncio.to_thread(received.temp_path.replace, final)
    try:
        session.add(row)
        await session.commit()
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    return row


def _live() -> Any:
    """Not past its expiry (expired files vanish before the cleanup removes them)."""
    return or_(StoredFile.expires_at.is_(None), StoredFile.expires_at > now())


async def get_file(session: AsyncSession, project_id: str, file_id: str) -> StoredFile:
    row = await session.get(StoredFile, file_id)
    if (
        row is None
        or row.project_id != project_id
        or (row.expires_at is not None and row.expires_at <= now())
    ):
        raise NotFound("file", file_id)
    return row


async def get_files(
    session: AsyncSession, project_id: str, file_ids: list[str]
) -> dict[str, StoredFile]:
    """The project's files by id; 404 for the first one that does not exist (or is another
    project's)."""
    wanted = list(dict.fromkeys(file_ids))
    rows: dict[str, StoredFile] = {}
    for start in range(0, len(wanted), 500):
        found = await session.scalars(
            select(StoredFile).where(
                StoredFile.id.in_(wanted[start : start + 500]),
                StoredFile.project_id == project_id,
                _live(),
            )
        )
        rows.update({row.id: row for row in found})
    for file_id in wanted:
        if file_id not in rows:
            raise NotFound("file", file_id)
    return rows


async def list_files(
    session: AsyncSession, project_id: str, params: ListParams, purpose: str | None
) -> Page[StoredFile]:
    where = [StoredFile.project_id == project_id, _live()]
    if purpose:
        where.append(StoredFile.purpose == purpose)
    return await paginate(session, StoredFile, params, *where)


async def delete_file(
    session: AsyncSession, index: VectorIndex, files_dir: Path, project_id: str, file_id: str
) -> None:
    """Delete the row (vector-store-file rows go with it), its chunks, then its bytes."""
    await get_file(session, project_id, file_id)
    await session.execute(delete(StoredFile).where(StoredFile.id == file_id))
    await session.commit()
    await _remove_everywhere(index, files_dir, file_id)


async def _remove_everywhere(index: VectorIndex, files_dir: Path, file_id: str) -> None:
    try:
        await index.delete_file(None, file_id)
    except Exception:
        # Search drops hits whose vector-store file is gone, so stale chunks stay invisible.
        logger.exception("removing chunks of deleted file %s failed", file_id)
    with contextlib.suppress(OSError):
        await asyncio.to_thread(file_path(files_dir, file_id).unlink, True)


async def delete_expired_files(db: Database, index: VectorIndex, files_dir: Path) -> int:
    """Delete files past `expires_at` (rows, chunks, bytes); returns how many."""
    async with db.sessionmaker() as session:
        ids = list(
            (
                await session.scalars(
                    select(StoredFile.id)
                    .where(StoredFile.expires_at.is_not(None), StoredFile.expires_at <= now())
                    .limit(1000)
                )
            ).all()
        )
        if not ids:
            return 0
        await session.execute(delete(StoredFile).where(StoredFile.id.in_(ids)))
        await session.commit()
    for file_id in ids:
        await _remove_everywhere(index, files_dir, file_id)
    logger.info("deleted %d expired file(s)", len(ids))
    return len(ids)
