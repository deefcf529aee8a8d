from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from app.assistants import service
from app.assistants.schemas import AssistantCreate, AssistantObject, AssistantUpdate
from app.deps import CallerDep, Models, Project, Session
from app.pagination import LIST_QUERY_OPENAPI, ListParams, list_params
from app.schemas import DeletedObject

router = APIRouter(prefix="/assistants", tags=["assistants"])


@router.post("")
async def create_assistant(
    body: AssistantCreate, session: Session, caller: CallerDep, models: Models
) -> AssistantObject:
    await models.require_known(body.model, caller.models)
    assistant = await service.create_assistant(session, caller.project_id, body)
    return AssistantObject.from_row(assistant)


@router.get("", openapi_extra=LIST_QUERY_OPENAPI)
async def list_assistants(
    session: Session, project: Project, params: Annotated[ListParams, Depends(list_params)]
) -> dict[str, Any]:
    page = await service.list_assistants(session, project, params)
    return page.to_response(lambda row: AssistantObject.from_row(row).model_dump())


@router.get("/{assistant_id}")
async def get_assistant(assistant_id: str, session: Session, project: Project) -> AssistantObject:
    return AssistantObject.from_row(await service.get_assistant(session, project, assistant_id))


@router.post("/{assistant_id}")
async def modify_assistant(
    assistant_id: str, body: AssistantUpdate, session: Session, caller: CallerDep, models: Models
) -> AssistantObject:
    if body.model is not None:
        await models.require_known(body.model, caller.models)
    assistant = await service.update_assistant(session, caller.project_id, assistant_id, body)
    return AssistantObject.from_row(assistant)


@router.delete("/{assistant_id}")
async def delete_assistant(assistant_id: str, session: Session, project: Project) -> DeletedObject:
    await service.delete_assistant(session, project, assistant_id)
    return DeletedObject(id=assistant_id, object="assistant.deleted")
