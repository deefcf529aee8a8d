"""Stored form of `tool_resources`, shared by assistants, threads and runs."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.files.service import get_files
from app.schemas import ToolResources
from app.vector_stores.schemas import VectorStoreCreate
from app.vector_stores.service import add_vector_store, require_stores


async def resolve_tool_resources(
    session: AsyncSession, project_id: str, resources: ToolResources | None
) -> dict[str, Any]:
    """The JSON we store and return: ids only, helpers already turned into objects. Every
    id must name one of the project's files or stores (404 otherwise, nothing written)."""
    if resources is None:
        return {}
    stored: dict[str, Any] = {}
    if resources.code_interpreter is not None:
        file_ids = list(resources.code_interpreter.file_ids)
        await get_files(session, project_id, file_ids)
        stored["code_interpreter"] = {"file_ids": file_ids}
    if resources.file_search is not None:
        store_ids = list(resources.file_search.vector_store_ids or [])
        await require_stores(session, project_id, store_ids)
        for helper in resources.file_search.vector_stores or []:
            # The `vector_stores` helper: create the store (and queue its files) right here.
            # Built without revalidation: the helper's own bound (10,000 files) is not the
            # 500 of a create-vector-store request, and its fields were validated already.
            request = VectorStoreCreate.model_construct(
                file_ids=list(helper.file_ids),
                chunking_strategy=helper.chunking_strategy,
                metadata=helper.metadata,
                name=None,
                expires_after=None,
            )
            store = await add_vector_store(session, project_id, request)
            store_ids.append(store.id)
        stored["file_search"] = {"vector_store_ids": store_ids}
    return stored
