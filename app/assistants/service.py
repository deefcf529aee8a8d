"""Assistant CRUD: the domain logic behind /v1/assistants (no HTTP here)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Select, Table, bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.assistants.models import Assistant
from app.assistants.schemas import AssistantCreate, AssistantUpdate
from app.errors import NotFound
from app.ids import new_id
from app.pagination import ListParams, Page, paginate
from app.prepared import Prepared
from app.schemas import dump_optional, dump_tools
from app.tool_resources import resolve_tool_resources


async def create_assistant(
    session: AsyncSession, project_id: str, body: AssistantCreate
) -> Assistant:
    assistant = Assistant(
        id=new_id("asst_"),
        project_id=project_id,
        model=body.model,
        name=body.name,
        description=body.description,
        instructions=body.instructions,
        reasoning_effort=body.reasoning_effort,
        tools=dump_tools(body.tools),
        tool_resources=await resolve_tool_resources(session, project_id, body.tool_resources),
        metadata_=body.metadata or {},
        temperature=body.temperature,
        top_p=body.top_p,
        response_format=dump_optional(body.response_format),
    )
    session.add(assistant)
    await session.commit()
    return assistant


async def get_assistant(session: AsyncSession, project_id: str, assistant_id: str) -> Assistant:
    assistant = await session.get(Assistant, assistant_id)
    if assistant is None or assistant.project_id != project_id:
        raise NotFound("assistant", assistant_id)
    return assistant


_ASSISTANTS: Table = Assistant.__table__  # type: ignore[assignment]


def select_assistant() -> Select[Any]:
    """The assistant `assistant_row` reads (parameters `assistant_id`, `owner`), for callers
    that read more beside it in the same statement."""
    return select(_ASSISTANTS).where(
        _ASSISTANTS.c.id == bindparam("assistant_id"),
        _ASSISTANTS.c.project_id == bindparam("owner"),
    )


_ASSISTANT_ROW = Prepared(select_assistant())


def assistant_row(
    conn: Connection,
    project_id: str,
    assistant_id: str,
    statement: Prepared = _ASSISTANT_ROW,
    params: dict[str, Any] | None = None,
) -> Any:
    """`get_assistant` in Core, inside a caller's transaction: a row with the column names
    (and whatever else `statement`, built on `select_assistant`, reads with `params`)."""
    for found in statement.namespaces(
        conn, {"assistant_id": assistant_id, "owner": project_id, **(params or {})}
    ):
        return found
    raise NotFound("assistant", assistant_id)


async def update_assistant(
    session: AsyncSession, project_id: str, assistant_id: str, body: AssistantUpdate
) -> Assistant:
    assistant = await get_assistant(session, project_id, assistant_id)
    sent = body.model_fields_set
    # Validate everything (including tool_resources) before touching the row.
    tool_resources = (
        await resolve_tool_resources(session, project_id, body.tool_resources)
        if "tool_resources" in sent
        else None
    )
    if "model" in sent and body.model is not None:
        assistant.model = body.model
    for field in (
        "name",
        "description",
        "instructions",
        "reasoning_effort",
        "temperature",
        "top_p",
    ):
        if field in sent:
            setattr(assistant, field, getattr(body, field))
    if "tools" in sent:
        assistant.tools = dump_tools(body.tools)
    if tool_resources is not None:
        assistant.tool_resources = tool_resources
    if "metadata" in sent:
        assistant.metadata_ = body.metadata or {}
    if "response_format" in sent:
        assistant.response_format = dump_optional(body.response_format)
    await session.commit()
    return assistant


async def delete_assistant(session: AsyncSession, project_id: str, assistant_id: str) -> None:
    result = await session.execute(
        delete(Assistant).where(Assistant.id == assistant_id, Assistant.project_id == project_id)
    )
    if result.rowcount == 0:
        raise NotFound("assistant", assistant_id)
    await session.commit()


async def list_assistants(
    session: AsyncSession, project_id: str, params: ListParams
) -> Page[Assistant]:
    return await paginate(session, Assistant, params, Assistant.project_id == project_id)
