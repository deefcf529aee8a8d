"""A thread's own vector store: files attached to messages for `file_search` land in it.

As on OpenAI, the first such attachment creates a store for the thread (expiring 7 days
after it was last active) and names it in the thread's `tool_resources`; later ones extend it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.files.service import get_files
from app.ids import new_id, now
from app.threads.models import Message, Thread
from app.vector_stores.models import VectorStore, VectorStoreFile
from app.vector_stores.schemas import stored_chunking
from app.vector_stores.service import _attach, _expires_at

THREAD_STORE_EXPIRY = {"anchor": "last_active_at", "days": 7}


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
    """Queue the messages' file_search attachments for ingestion into the thread's store."""
    file_ids = file_search_attachments(messages)
    if not file_ids:
        return
    await get_files(session, file_ids)  # unknown files are a 404, before anything is written
    resources = dict(thread.tool_resources or {})
    store_ids = list((resources.get("file_search") or {}).get("vector_store_ids") or [])
    store = await session.get(VectorStore, store_ids[0]) if store_ids else None
    if store is None:
        store = VectorStore(
            id=new_id("vs_"),
            name=None,
            expires_after=THREAD_STORE_EXPIRY,
            last_active_at=now(),
            expired=False,
            metadata_={},
        )
        store.expires_at = _expires_at(store)
        session.add(store)
        await session.flush()
        thread.tool_resources = {**resources, "file_search": {"vector_store_ids": [store.id]}}
    present = set(
        (
            await session.scalars(
                select(VectorStoreFile.id).where(
                    VectorStoreFile.vector_store_id == store.id, VectorStoreFile.id.in_(file_ids)
                )
            )
        ).all()
    )
    for file_id in file_ids:
        if file_id not in present:
            await _attach(session, store.id, file_id, stored_chunking(None), None, None)


async def wait_for_ingestion(
    session: AsyncSession, vector_store_ids: list[str], patience: float
) -> None:
    """Let files still being ingested into these stores finish before a search reads them
    (for at most `patience` seconds; then search what is there)."""
    deadline = time.monotonic() + patience
    while vector_store_ids and time.monotonic() < deadline:
        pending = await session.scalar(
            select(func.count())
            .select_from(VectorStoreFile)
            .where(
                VectorStoreFile.vector_store_id.in_(vector_store_ids),
                VectorStoreFile.status == "in_progress",
            )
        )
        await session.commit()  # end the read transaction so the next poll sees new rows
        if not pending:
            return
        await asyncio.sleep(0.2)
