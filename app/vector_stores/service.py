"""Vector stores, their files and file batches, and search (no HTTP here).

A store's `status` / `file_counts` / `usage_bytes` and a batch's `status` / `file_counts`
are derived from the vector-store-file rows when read (one grouped query), so they can
never drift from the files while ingestion runs in the background.

`search_vector_stores` is also the entry point for the run executor's file_search tool.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import Database
from app.errors import APIError, InvalidRequest, NotFound
from app.files.models import StoredFile
from app.files.service import file_path, get_files
from app.ids import new_id, now
from app.pagination import ListParams, Page, paginate
from app.retrieval.embeddings import Embedder, EmbeddingError
from app.retrieval.index import SearchHit, VectorIndex
from app.retrieval.parsing import ParsingError, extract_text
from app.vector_stores.models import VectorStore, VectorStoreFile, VectorStoreFileBatch
from app.vector_stores.schemas import (
    FileBatchCreate,
    FileBatchObject,
    VectorStoreCreate,
    VectorStoreFileCreate,
    VectorStoreObject,
    VectorStoreUpdate,
    empty_counts,
    search_item,
    stored_chunking,
)

logger = logging.getLogger("opengrove.vector_stores")

DAY = 86_400


# -- vector stores -----------------------------------------------------------------------


def is_expired(store: VectorStore) -> bool:
    return store.expired or (store.expires_at is not None and store.expires_at <= now())


def _expires_at(store: VectorStore) -> int | None:
    if not store.expires_after:
        return None
    return store.last_active_at + int(store.expires_after["days"]) * DAY


async def _store_counts(
    session: AsyncSession, store_ids: Sequence[str]
) -> dict[str, tuple[dict[str, int], int]]:
    """Per store: file counts by status and total usage bytes."""
    result: dict[str, tuple[dict[str, int], int]] = {sid: (empty_counts(), 0) for sid in store_ids}
    if not store_ids:
        return result
    rows = await session.execute(
        select(
            VectorStoreFile.vector_store_id,
            VectorStoreFile.status,
            func.count(),
            func.coalesce(func.sum(VectorStoreFile.usage_bytes), 0),
        )
        .where(VectorStoreFile.vector_store_id.in_(list(store_ids)))
        .group_by(VectorStoreFile.vector_store_id, VectorStoreFile.status)
    )
    usage: dict[str, int] = dict.fromkeys(store_ids, 0)
    for store_id, status, count, used in rows:
        counts = result[store_id][0]
        counts[status] = counts.get(status, 0) + int(count)
        counts["total"] += int(count)
        usage[store_id] += int(used)
    return {sid: (result[sid][0], usage[sid]) for sid in store_ids}


async def render_stores(session: AsyncSession, rows: Sequence[VectorStore]) -> list[dict[str, Any]]:
    counts = await _store_counts(session, [row.id for row in rows])
    return [
        VectorStoreObject.from_row(row, *counts[row.id], expired=is_expired(row)).render()
        for row in rows
    ]


async def render_store(session: AsyncSession, row: VectorStore) -> dict[str, Any]:
    return (await render_stores(session, [row]))[0]


async def get_vector_store(session: AsyncSession, vector_store_id: str) -> VectorStore:
    store = await session.get(VectorStore, vector_store_id)
    if store is None:
        raise NotFound("vector store", vector_store_id)
    return store


def _require_active(store: VectorStore) -> None:
    if is_expired(store):
        raise InvalidRequest(
            f"Vector store {store.id} has expired and can no longer be used; create a new one.",
            param="vector_store_id",
        )


async def create_vector_store(session: AsyncSession, body: VectorStoreCreate) -> VectorStore:
    store = await add_vector_store(session, body)
    await session.commit()
    return store


async def add_vector_store(session: AsyncSession, body: VectorStoreCreate) -> VectorStore:
    """The store and its files' ingestion rows, in the caller's transaction (uncommitted)."""
    files = await get_files(session, body.file_ids) if body.file_ids else {}
    store = VectorStore(
        id=new_id("vs_"),
        name=body.name,
        expires_after=body.expires_after.model_dump() if body.expires_after else None,
        last_active_at=now(),
        expired=False,
        metadata_=body.metadata or {},
    )
    store.expires_at = _expires_at(store)
    session.add(store)
    await session.flush()
    chunking = stored_chunking(body.chunking_strategy)
    for file_id in files:
        await _attach(session, store.id, file_id, chunking, None, None)
    return store


async def update_vector_store(
    session: AsyncSession, vector_store_id: str, body: VectorStoreUpdate
) -> VectorStore:
    store = await get_vector_store(session, vector_store_id)
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
    session: AsyncSession, index: VectorIndex, vector_store_id: str
) -> None:
    result = await session.execute(delete(VectorStore).where(VectorStore.id == vector_store_id))
    if result.rowcount == 0:
        raise NotFound("vector store", vector_store_id)
    await session.commit()
    try:
        await index.delete_store(vector_store_id)
    except Exception:
        # Search drops hits from stores that no longer exist, so leftovers stay invisible.
        logger.exception("removing chunks of deleted vector store %s failed", vector_store_id)


async def list_vector_stores(session: AsyncSession, params: ListParams) -> Page[VectorStore]:
    return await paginate(session, VectorStore, params)


async def touch_vector_stores(session: AsyncSession, vector_store_ids: Sequence[str]) -> None:
    """Mark stores as used now, and commit."""
    await mark_vector_stores_active(session, vector_store_ids)
    await session.commit()


async def mark_vector_stores_active(session: AsyncSession, vector_store_ids: Sequence[str]) -> None:
    """Move `last_active_at` (and `expires_at` with it) to now, in the caller's transaction."""
    if not vector_store_ids:
        return
    stores = (
        await session.scalars(
            select(VectorStore).where(
                VectorStore.id.in_(list(vector_store_ids)), VectorStore.expired.is_(False)
            )
        )
    ).all()
    for store in stores:
        if not is_expired(store):
            _mark_active(store)


def _mark_active(store: VectorStore) -> None:
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


# -- vector store files ------------------------------------------------------------------


def file_not_found(vector_store_id: str, file_id: str) -> APIError:
    return APIError(404, f"No file found with id '{file_id}' in vector store '{vector_store_id}'.")


async def _attach(
    session: AsyncSession,
    vector_store_id: str,
    file_id: str,
    chunking: dict[str, Any],
    attributes: dict[str, Any] | None,
    batch_id: str | None,
) -> VectorStoreFile:
    """Add (or re-add, re-processing it) a file to a store, queued for ingestion."""
    row = await session.scalar(
        select(VectorStoreFile).where(
            VectorStoreFile.vector_store_id == vector_store_id, VectorStoreFile.id == file_id
        )
    )
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
    return row


async def create_vector_store_file(
    session: AsyncSession, vector_store_id: str, body: VectorStoreFileCreate
) -> VectorStoreFile:
    store = await get_vector_store(session, vector_store_id)
    _require_active(store)
    await get_files(session, [body.file_id])
    row = await _attach(
        session,
        store.id,
        body.file_id,
        stored_chunking(body.chunking_strategy),
        body.attributes,
        None,
    )
    _mark_active(store)
    await session.commit()
    return row


async def get_vector_store_file(
    session: AsyncSession, vector_store_id: str, file_id: str
) -> VectorStoreFile:
    await get_vector_store(session, vector_store_id)
    row = await session.scalar(
        select(VectorStoreFile).where(
            VectorStoreFile.vector_store_id == vector_store_id, VectorStoreFile.id == file_id
        )
    )
    if row is None:
        raise file_not_found(vector_store_id, file_id)
    return row


async def list_vector_store_files(
    session: AsyncSession,
    vector_store_id: str,
    params: ListParams,
    status: str | None,
    batch_id: str | None = None,
) -> Page[VectorStoreFile]:
    await get_vector_store(session, vector_store_id)
    where = [VectorStoreFile.vector_store_id == vector_store_id]
    if batch_id is not None:
        await get_file_batch(session, vector_store_id, batch_id)
        where.append(VectorStoreFile.batch_id == batch_id)
    if status is not None:
        where.append(VectorStoreFile.status == status)
    return await paginate(session, VectorStoreFile, params, *where)


async def update_vector_store_file(
    session: AsyncSession,
    index: VectorIndex,
    vector_store_id: str,
    file_id: str,
    attributes: dict[str, Any] | None,
) -> VectorStoreFile:
    row = await get_vector_store_file(session, vector_store_id, file_id)
    row.attributes = attributes
    await session.commit()
    if row.status == "completed":
        # Still in progress: ingestion re-reads the attributes when it finishes.
        await index.update_attributes(vector_store_id, file_id, attributes or {})
    return row


async def delete_vector_store_file(
    session: AsyncSession, index: VectorIndex, vector_store_id: str, file_id: str
) -> None:
    """Detach the file from the store (the file itself stays)."""
    row = await get_vector_store_file(session, vector_store_id, file_id)
    await session.delete(row)
    await session.commit()
    await index.delete_file(vector_store_id, file_id)


async def vector_store_file_content(
    session: AsyncSession, files_dir: Path, vector_store_id: str, file_id: str
) -> dict[str, Any]:
    """The parsed text of a vector store file (`vector_store.file_content.page`)."""
    await get_vector_store_file(session, vector_store_id, file_id)
    stored = await session.get(StoredFile, file_id)
    data: list[dict[str, str]] = []
    if stored is not None:
        try:
            text = await asyncio.to_thread(
                extract_text, file_path(files_dir, stored.id), stored.filename, stored.mime_type
            )
        except (ParsingError, OSError):
            text = ""
        if text:
            data.append({"type": "text", "text": text})
    return {"object": "vector_store.file_content.page", "data": data, "has_more": False,
            "next_page": None}  # fmt: skip


# -- file batches ------------------------------------------------------------------------


async def batch_counts(session: AsyncSession, batch_id: str) -> dict[str, int]:
    counts = empty_counts()
    rows = await session.execute(
        select(VectorStoreFile.status, func.count())
        .where(VectorStoreFile.batch_id == batch_id)
        .group_by(VectorStoreFile.status)
    )
    for status, count in rows:
        counts[status] = counts.get(status, 0) + int(count)
        counts["total"] += int(count)
    return counts


async def render_batch(session: AsyncSession, batch: VectorStoreFileBatch) -> dict[str, Any]:
    return FileBatchObject.from_row(batch, await batch_counts(session, batch.id)).render()


async def create_file_batch(
    session: AsyncSession, vector_store_id: str, body: FileBatchCreate
) -> VectorStoreFileBatch:
    store = await get_vector_store(session, vector_store_id)
    _require_active(store)
    default_chunking = stored_chunking(body.chunking_strategy)
    specs: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {}
    if body.files is not None:
        for item in body.files:
            chunking = (
                stored_chunking(item.chunking_strategy)
                if item.chunking_strategy is not None
                else default_chunking
            )
            attributes = item.attributes if "attributes" in item.model_fields_set else None
            specs[item.file_id] = (chunking, attributes or body.attributes)
    else:
        for file_id in body.file_ids or []:
            specs[file_id] = (default_chunking, body.attributes)
    await get_files(session, list(specs))
    batch = VectorStoreFileBatch(id=new_id("vsfb_"), vector_store_id=store.id, status="in_progress")
    session.add(batch)
    await session.flush()
    for file_id, (chunking, attributes) in specs.items():
        await _attach(session, store.id, file_id, chunking, attributes, batch.id)
    _mark_active(store)
    await session.commit()
    return batch


async def get_file_batch(
    session: AsyncSession, vector_store_id: str, batch_id: str
) -> VectorStoreFileBatch:
    await get_vector_store(session, vector_store_id)
    batch = await session.get(VectorStoreFileBatch, batch_id)
    if batch is None or batch.vector_store_id != vector_store_id:
        raise NotFound("vector store file batch", batch_id)
    return batch


async def cancel_file_batch(
    session: AsyncSession, index: VectorIndex, vector_store_id: str, batch_id: str
) -> VectorStoreFileBatch:
    """Cancel the files not yet processed; files already done stay as they are."""
    batch = await get_file_batch(session, vector_store_id, batch_id)
    counts = await batch_counts(session, batch.id)
    if batch.status != "cancelled" and counts["in_progress"] == 0:
        raise InvalidRequest(
            f"Cannot cancel file batch {batch_id}: it has already finished.", param="batch_id"
        )
    cancelled = list(
        (
            await session.scalars(
                update(VectorStoreFile)
                .where(
                    VectorStoreFile.batch_id == batch.id,
                    VectorStoreFile.status == "in_progress",
                )
                .values(status="cancelled", lease_owner=None, lease_expires_at=None)
                .returning(VectorStoreFile.id)
                .execution_options(synchronize_session=False)
            )
        ).all()
    )
    batch.status = "cancelled"
    await session.commit()
    for file_id in cancelled:  # a worker may have written chunks before it noticed
        await index.delete_file(vector_store_id, file_id)
    return batch


# -- search ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Key:
    file_id: str
    chunk_index: int


async def search_vector_stores(
    session: AsyncSession,
    index: VectorIndex,
    embedder: Embedder | None,
    vector_store_ids: list[str],
    query: str,
    max_num_results: int = 10,
    score_threshold: float = 0.0,
    filters: dict[str, Any] | None = None,
) -> list[SearchHit]:
    """Best chunks for `query` across the stores, best first (read-only; never commits).

    Stores that do not exist or have expired are skipped. With an embedder (and a dense
    index) the search is hybrid; if embedding the query fails it falls back to lexical.
    Each hit has vector_store_id, file_id, filename, score (0..1), text, chunk_index and
    attributes. `filters` is an OpenAI ComparisonFilter / CompoundFilter (ValueError when
    malformed).
    """
    if not vector_store_ids or not query.strip():
        return []
    stores = (
        await session.scalars(select(VectorStore).where(VectorStore.id.in_(vector_store_ids)))
    ).all()
    live = [store.id for store in stores if not is_expired(store)]
    if not live:
        return []
    dense: list[float] | None = None
    if embedder is not None and index.dense_dim:
        try:
            dense = await embedder.embed_query(query)
        except EmbeddingError:
            logger.warning("embedding the search query failed; searching lexically", exc_info=True)
        if dense is not None and len(dense) != index.dense_dim:
            logger.warning("query embedding has the wrong dimension; searching lexically")
            dense = None
    hits = await index.search(
        live,
        query,
        dense_query=dense,
        max_num_results=max_num_results,
        score_threshold=score_threshold,
        filters=filters,
    )
    if not hits:
        return []
    # Drop chunks whose vector-store file is gone (deleted or cancelled mid-ingestion).
    present = set(
        (
            await session.execute(
                select(VectorStoreFile.vector_store_id, VectorStoreFile.id).where(
                    VectorStoreFile.vector_store_id.in_(live),
                    VectorStoreFile.id.in_({hit.file_id for hit in hits}),
                    VectorStoreFile.status.in_(("completed", "in_progress")),
                )
            )
        ).tuples()
    )
    return [hit for hit in hits if (hit.vector_store_id, hit.file_id) in present]


async def search(
    session: AsyncSession,
    index: VectorIndex,
    embedder: Embedder | None,
    vector_store_id: str,
    queries: list[str],
    max_num_results: int,
    score_threshold: float,
    filters: dict[str, Any] | None,
) -> dict[str, Any]:
    """`POST /vector_stores/{id}/search`: a `vector_store.search_results.page`."""
    store = await get_vector_store(session, vector_store_id)
    _require_active(store)
    best: dict[_Key, SearchHit] = {}
    for query in queries:
        for hit in await search_vector_stores(
            session, index, embedder, [store.id], query, max_num_results, score_threshold, filters
        ):
            key = _Key(hit.file_id, hit.chunk_index)
            if key not in best or best[key].score < hit.score:
                best[key] = hit
    ranked = sorted(best.values(), key=lambda h: (-h.score, h.file_id, h.chunk_index))
    ranked = ranked[:max_num_results]
    await touch_vector_stores(session, [store.id])
    return {
        "object": "vector_store.search_results.page",
        "search_query": queries,
        "data": [
            search_item(h.file_id, h.filename, h.score, dict(h.attributes), h.text) for h in ranked
        ],
        "has_more": False,
        "next_page": None,
    }
