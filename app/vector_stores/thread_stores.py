"""A thread's own vector store: files attached to messages for `file_search` land in it.

As on OpenAI, the first such attachment creates a store for the thread (expiring 7 days
after it was last active) and names it in the thread's `tool_resources`; later ones extend it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.files.service import get_files
from app.retrieval.index import VectorIndex
from app.threads.models import Message, Thread
from app.vector_stores.models import VectorStore
from app.vector_stores.schemas import ExpiresAfter, VectorStoreCreate, stored_chunking
from app.vector_stores.service import Attachment, add_vector_store, attach_files

logger = logging.getLogger("opengrove.vector_stores")

THREAD_STORE_EXPIRY = ExpiresAfter(anchor="last_active_at", days=7)


def file_search_attachments(messages: Iterable[Message]) -> list[str]:
    ids: dict[str, None] = {}
    for message in messages:
        for attachment in message.attachments or []:
            if any(tool.get("type") == "file_search" for tool in attachment.get("tools", [])):
                ids[attachment["file_id"]] = None
    return list(ids)


async def attach_to_thread_store(
    session: AsyncSession, thread: Thread, messages: Iterable[Message]
) -> None:
    """Queue the messages' file_search attachments for ingestion into the thread's store,
    creating the store first if the thread has none (in the caller's transaction)."""
    file_ids = file_search_attachments(messages)
    if not file_ids:
        return
    # Unknown (or another project's) files are a 404, before anything is written.
    await get_files(session, thread.project_id, file_ids)
    resources = dict(thread.tool_resources or {})
    store_ids = list((resources.get("file_search") or {}).get("vector_store_ids") or [])
    store = await session.get(VectorStore, store_ids[0]) if store_ids else None
    if store is None or store.project_id != thread.project_id:
        store = await add_vector_store(
            session, thread.project_id, VectorStoreCreate(expires_after=THREAD_STORE_EXPIRY)
        )
        store.thread_id = thread.id
        thread.tool_resources = {**resources, "file_search": {"vector_store_ids": [store.id]}}
    attachment = Attachment(stored_chunking(None))
    await attach_files(session, store.id, dict.fromkeys(file_ids, attachment), keep_existing=True)


async def drop_thread_stores(session: AsyncSession, project_id: str, thread_id: str) -> list[str]:
    """Delete the stores a thread's attachments made (in the caller's transaction; their
    files' rows go with them); their ids, for `forget_stores` once committed."""
    ids = list(
        await session.scalars(
            select(VectorStore.id).where(
                VectorStore.thread_id == thread_id, VectorStore.project_id == project_id
            )
        )
    )
    if ids:
        await session.execute(delete(VectorStore).where(VectorStore.id.in_(ids)))
    return ids


async def forget_stores(index: VectorIndex, store_ids: Iterable[str]) -> None:
    """Remove deleted stores' chunks from the index (retried by the index when it fails;
    the reconciliation at start catches what a crash left)."""
    for store_id in store_ids:
        try:
            await index.delete_store(store_id)
        except Exception:
            logger.exception("removing chunks of deleted vector store %s failed", store_id)
