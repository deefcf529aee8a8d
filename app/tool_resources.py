"""Stored form of `tool_resources`, shared by assistants, threads and runs."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import InvalidRequest
from app.schemas import ToolResources


async def resolve_tool_resources(
    _session: AsyncSession, resources: ToolResources | None
) -> dict[str, Any]:
    """The JSON we store and return: ids only, helpers already turned into objects."""
    if resources is None:
        return {}
    stored: dict[str, Any] = {}
    if resources.code_interpreter is not None:
        stored["code_interpreter"] = {"file_ids": list(resources.code_interpreter.file_ids)}
    if resources.file_search is not None:
        if resources.file_search.vector_stores:
            # Creating a vector store inline needs the vector store domain (files issue).
            raise InvalidRequest(
                "Creating vector stores inline with 'tool_resources.file_search.vector_stores' "
                "is not available on this server yet; create the vector store first and pass "
                "'vector_store_ids'.",
                param="tool_resources.file_search.vector_stores",
                code="unsupported_parameter",
            )
        stored["file_search"] = {
            "vector_store_ids": list(resources.file_search.vector_store_ids or [])
        }
    return stored
