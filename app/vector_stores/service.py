"""Vector stores themselves: create, read, update, delete, expiry and activity, and
`attach_files`, which queues files into a store for ingestion (no HTTP here).

A store's `status` / `file_counts` / `usage_bytes` are derived from its vector-store-file
rows when read (`store_counts`, one grouped query), so they can never drift from the files
while ingestion runs in the background.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import Database
from app.errors import InvalidRequest, NotFound
from app.files.service import get_files
from app.ids import new_id, now
from app.pagination import ListParams, Page, paginate
from app.retrieval.index import VectorIndex
from app.vector_stores.models import VectorStore, VectorStoreFile
from app.vector_stores.schemas import (
    StoreCounts,
    VectorStoreCreate,
    VectorStoreUpdate,
    empty_counts,
    stored_chunking,
)

logger = logging.getLogger("opengrove.vector_stores")

DAY = 86_400


# -- reading -----------------------------------------------------------------------------


async def get_vector_store(
    session: AsyncSession, project_id: str, vector_store_id: str
) -> VectorStore:
    store = await session.get(VectorStore, vector_store_id)
    if store is None or store.project_id != project_id:
        raise NotFound("vector store", vector_store_id)
    return store


async def get_active_store(
    session: AsyncSession, project_id: str, vector_store_id: str, *, lock: bool = False
) -> VectorStore:
    """The store, for an operation that uses it: 404 when missing, 400 when expired.
    `lock`: held until the transaction ends, so concurrent attaches to one store run one
    after the other (each sees the other's rows: a file is never attached twice)."""
    if lock:
        await session.execute(
            update(VectorStore)
            .where(VectorStore.id == vector_store_id, VectorStore.project_id == project_id)
            .values(id=VectorStore.id)
            .execution_options(synchronize_session=False)
        )
    store = await get_vector_store(session, project_id, vector_store_id)
    if store.has_expired():
        raise InvalidRequest(
            f"Vector store {store.id} has expired and can no longer be used; create a new one.",
            param="vector_store_id",
        )
    return store


async def list_vector_stores(
    session: AsyncSession, project_id: str, params: ListParams
) -> Page[VectorStore]:
    return await paginate(session, VectorStore, params, VectorStore.project_id == project_id)


async def require_stores(
    session: AsyncSession, project_id: str, vector_store_ids: Sequence[str]
) -> None:
    """404 for the first id that is not one of the project's stores."""
    wanted = list(dict.fromkeys(vector_store_ids))
    found = set(
        await session.scalars(
            select(VectorStore.id).where(
                VectorStore.id.in_(wanted), VectorStore.project_id == project_id
            )
        )
    )
    for store_id in wanted:
        if store_id not in found:
            raise NotFound("vector store", store_id)


async def store_counts(
    session: AsyncSession, stores: Sequence[VectorStore]
) -> dict[str, StoreCounts]:
    """Per store id: its file counts by status and total usage bytes."""
    counts = {store.id: empty_counts() for store in stores}
    usage = dict.fromkeys(counts, 0)
    if counts:
        rows = await session.execute(
            select(
                VectorStoreFile.vector_store_id,
                VectorStoreFile.status,
                func.count(),
                func.coalesce(func.sum(VectorStoreFile.usage_bytes), 0),
            )
            .where(VectorStoreFile.vector_store_id.in_(list(counts)))
            .group_by(VectorStoreFile.vector_store_id, VectorStoreFile.status)
        )
        for store_id, status, count, used in rows:
            counts[store_id][status] = counts[store_id].get(status, 0) + int(count)
            counts[store_id]["total"] += int(count)
            usage[store_id] += int(used)
    return {store_id: StoreCounts(counts[store_id], usage[store_id]) for store_id in counts}


async def count_store(session: AsyncSession, store: VectorStore) -> StoreCounts:
    return (await store_counts(session, [store]))[store.id]


# -- writing -----------------------------------------------------------------------------


def _expires_at(store: VectorStore) -> int | None:
    if not store.expires_after:
        return None
    return store.last_active_at + int(store.expires_after["days"]) * DAY


async def create_vector_store(
    session: AsyncSession, project_id: str, body: VectorStoreCreate
) -> VectorStore:
    store = await add_vector_store(session, project_id, body)
    await session.commit()
    return store


async def add_vector_store(
    session: AsyncSession, project_id: str, body: VectorStoreCreate
) -> VectorStore:
    """The store and its files' ingestion rows, in the caller's transaction (uncommitted)."""
    files = await get_files(session, project_id, body.file_ids) if body.file_ids else {}
    store = VectorStore(
        id=new_id("vs_"),
        project_id=project_id,
        name=body.name,
        expires_after=body.expires_after.model_dump() if body.expires_after else None,
        last_active_at=now(),
        expired=False,
        metadata_=body.metadata or {},
    )
    store.expires_at = _expires_at(store)
    session.add(store)
    await session.flush()
    attachment = Attachment(stored_chunking(body.chunking_strategy))
    await attach_files(session, store.id, dict.fromkeys(files, attachment))
    return store


async def update_vector_store(
    session: AsyncSession, project_id: str, vector_store_id: str, body: VectorStoreUpdate
) -> VectorStore:
    store = await get_vector_store(session, project_id, vector_store_id)
    sent = body.model_fields_set
    if "name" in sent:
        store.name = body.name
    if "metadata" in sent:
        store.metadata_ = body.metadata or {}
    if "expires_after" in sent:
        store.expires_after = body.expires_after.model_dump() if body.expires_after else None
        if not store.expired:
            store.expires_at = _expires_at(store)
    await session.commit()
    return store


async def delete_vector_store(
    session: AsyncSession, index: VectorIndex, project_id: str, vector_store_id: str
) -> None:
    result = await session.execute(
        delete(VectorStore).where(
            VectorStore.id == vector_store_id, VectorStore.project_id == project_id
        )
    )
    if result.rowcount == 0:
        raise NotFound("vector store", vector_store_id)
    await session.commit()
    try:
        await index.delete_store(vector_store_id)
    except Exception:
        # Search drops hits from stores that no longer exist, so leftovers stay invisible.
        logger.exception("removing chunks of deleted vector store %s failed", vector_store_id)


class Attachment(NamedTuple):
    """How a file is attached: its stored chunking strategy and its attributes."""

    chunking: dict[str, Any]
    attributes: dict[str, Any] | None = None


async def attach_files(
    session: AsyncSession,
    vector_store_id: str,
    files: Mapping[str, Attachment],
    *,
    batch_id: str | None = None,
    keep_existing: bool = False,
) -> list[VectorStoreFile]:
    """Queue files (file id → attachment) for ingestion into a store, in the caller's
    transaction. A file already in the store is re-processed with the new settings, or, with
    `keep_existing`, left as it is (and not returned). The files must exist (callers check
    with `app.files.service.get_files` before writing anything)."""
    if not files:
        return []
    existing = {
        row.id: row
        for row in await session.scalars(
            select(VectorStoreFile).where(
                VectorStoreFile.vector_store_id == vector_store_id,
                VectorStoreFile.id.in_(list(files)),
            )
        )
    }
    rows = []
    for file_id, (chunking, attributes) in files.items():
        row = existing.get(file_id)
        if row is not None and keep_existing:
            continue
        if row is None:
            row = VectorStoreFile(
                key=new_id("vsf_"), id=file_id, vector_store_id=vector_store_id, created_at=now()
            )
            session.add(row)
        row.batch_id = batch_id
        row.status = "in_progress"
        row.last_error = None
        row.chunking_strategy = chunking
        row.attributes = attributes
        row.ingest_token = secrets.token_hex(8)
        row.attempts = 0
        row.lease_owner = None
        row.lease_expires_at = None
        rows.append(row)
    return rows


# -- activity and expiry -----------------------------------------------------------------


def mark_active(store: VectorStore) -> None:
    """The store was used now: move `last_active_at` (and `expires_at` with it)."""
    store.last_active_at = now()
    store.expires_at = _expires_at(store)


async def expire_vector_stores(db: Database) -> int:
    """Mark stores past `expires_at` as expired; returns how many. Run periodically."""
    async with db.sessionmaker() as session:
        result = await session.execute(
            update(VectorStore)
            .where(
                VectorStore.expired.is_(False),
                VectorStore.expires_at.is_not(None),
                VectorStore.expires_at <= now(),
            )
            .values(expired=True)
            .execution_options(synchronize_session=False)
        )
        await session.commit()
    if result.rowcount:
        logger.info("marked %d vector store(s) expired", result.rowcount)
    return int(result.rowcount or 0)
