"""A vector store's files and file batches (no HTTP here).

A batch's `status` / `file_counts` are derived from its files when read (`batch_counts`).
Attaching itself is `service.attach_files`, shared with store creation and thread stores.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import APIError, InvalidRequest, NotFound
from app.files.models import StoredFile
from app.files.service import file_path, get_files
from app.ids import new_id
from app.pagination import ListParams, Page, paginate
from app.retrieval.index import VectorIndex
from app.retrieval.parsing import ParsingError, extract_text
from app.vector_stores.models import VectorStoreFile, VectorStoreFileBatch
from app.vector_stores.schemas import (
    FileBatchCreate,
    VectorStoreFileCreate,
    empty_counts,
    stored_chunking,
)
from app.vector_stores.service import (
    Attachment,
    attach_files,
    get_active_store,
    get_vector_store,
    mark_active,
)

# -- vector store files ------------------------------------------------------------------


def file_not_found(vector_store_id: str, file_id: str) -> APIError:
    return APIError(404, f"No file found with id '{file_id}' in vector store '{vector_store_id}'.")


async def create_vector_store_file(
    session: AsyncSession, project_id: str, vector_store_id: str, body: VectorStoreFileCreate
) -> VectorStoreFile:
    store = await get_active_store(session, project_id, vector_store_id, lock=True)
    await get_files(session, project_id, [body.file_id])
    attachment = Attachment(stored_chunking(body.chunking_strategy), body.attributes)
    [row] = await attach_files(session, store.id, {body.file_id: attachment})
    mark_active(store)
    await session.commit()
    return row


async def get_vector_store_file(
    session: AsyncSession, project_id: str, vector_store_id: str, file_id: str
) -> VectorStoreFile:
    await get_vector_store(session, project_id, vector_store_id)
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
    project_id: str,
    vector_store_id: str,
    params: ListParams,
    status: str | None,
    batch_id: str | None = None,
) -> Page[VectorStoreFile]:
    await get_vector_store(session, project_id, vector_store_id)
    where = [VectorStoreFile.vector_store_id == vector_store_id]
    if batch_id is not None:
        await get_file_batch(session, project_id, vector_store_id, batch_id)
        where.append(VectorStoreFile.batch_id == batch_id)
    if status is not None:
        where.append(VectorStoreFile.status == status)
    return await paginate(session, VectorStoreFile, params, *where)


async def update_vector_store_file(
    session: AsyncSession,
    index: VectorIndex,
    project_id: str,
    vector_store_id: str,
    file_id: str,
    attributes: dict[str, Any] | None,
) -> VectorStoreFile:
    row = await get_vector_store_file(session, project_id, vector_store_id, file_id)
    row.attributes = attributes
    await session.commit()
    if row.status == "completed":
        # Still in progress: ingestion re-reads the attributes when it finishes.
        await index.update_attributes(vector_store_id, file_id, attributes or {})
    return row


async def delete_vector_store_file(
    session: AsyncSession, index: VectorIndex, project_id: str, vector_store_id: str, file_id: str
) -> None:
    """Detach the file from the store (the file itself stays)."""
    row = await get_vector_store_file(session, project_id, vector_store_id, file_id)
    await session.delete(row)
    await session.commit()
    await index.delete_file(vector_store_id, file_id)


async def vector_store_file_text(
    session: AsyncSession, files_dir: Path, project_id: str, vector_store_id: str, file_id: str
) -> str:
    """The parsed text of a vector store file ("" when it has none or cannot be read)."""
    await get_vector_store_file(session, project_id, vector_store_id, file_id)
    stored = await session.get(StoredFile, file_id)
    if stored is None:
        return ""
    try:
        return await asyncio.to_thread(
            extract_text, file_path(files_dir, stored.id), stored.filename, stored.mime_type
        )
    except (ParsingError, OSError):
        return ""


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


async def create_file_batch(
    session: AsyncSession, project_id: str, vector_store_id: str, body: FileBatchCreate
) -> VectorStoreFileBatch:
    store = await get_active_store(session, project_id, vector_store_id, lock=True)
    default_chunking = stored_chunking(body.chunking_strategy)
    files: dict[str, Attachment] = {}
    if body.files is not None:
        for item in body.files:
            chunking = (
                stored_chunking(item.chunking_strategy)
                if item.chunking_strategy is not None
                else default_chunking
            )
            attributes = item.attributes if "attributes" in item.model_fields_set else None
            files[item.file_id] = Attachment(chunking, attributes or body.attributes)
    else:
        for file_id in body.file_ids or []:
            files[file_id] = Attachment(default_chunking, body.attributes)
    await get_files(session, project_id, list(files))
    batch = VectorStoreFileBatch(id=new_id("vsfb_"), vector_store_id=store.id, status="in_progress")
    session.add(batch)
    await session.flush()
    await attach_files(session, store.id, files, batch_id=batch.id)
    mark_active(store)
    await session.commit()
    return batch


async def get_file_batch(
    session: AsyncSession, project_id: str, vector_store_id: str, batch_id: str
) -> VectorStoreFileBatch:
    await get_vector_store(session, project_id, vector_store_id)
    batch = await session.get(VectorStoreFileBatch, batch_id)
    if batch is None or batch.vector_store_id != vector_store_id:
        raise NotFound("vector store file batch", batch_id)
    return batch


async def cancel_file_batch(
    session: AsyncSession, index: VectorIndex, project_id: str, vector_store_id: str, batch_id: str
) -> VectorStoreFileBatch:
    """Cancel the files not yet processed; files already done stay as they are."""
    batch = await get_file_batch(session, project_id, vector_store_id, batch_id)
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
