from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from app.assistants import service
from app.assistants.schemas import AssistantCreate, AssistantObject, AssistantUpdate
from app.deps import Models, Session
from app.pagination import ListParams, list_params
from app.schemas import DeletedObject

router = APIRouter(prefix="/assistants", tags=["assistants"])


@router.post("")
async def create_assistant(
    body: AssistantCreate, session: Session, models: Models
) -> AssistantObject:
    await models.require_known(body.model)
    return AssistantObject.from_row(await service.create_assistant(session, body))


@router.get("")
async def list_assistants(
    session: Session, params: Annotated[ListParams, Depends(list_params)]
) -> dict[str, Any]:
    page = await service.list_assistants(session, params)
    return page.to_response(lambda row: AssistantObject.from_row(row).model_dump())


@router.get("/{assistant_id}")
async def get_assistant(assistant_id: str, session: Session) -> AssistantObject:
    return AssistantObject.from_row(await service.get_assistant(session, assistant_id))


@router.post("/{assistant_id}")
async def modify_assistant(
    assistant_id: str, body: AssistantUpdate, session: Session, models: Models
) -> AssistantObject:
    if body.model is not None:
        await models.require_known(body.model)
    return AssistantObject.from_row(await service.update_assistant(session, assistant_id, body))


@router.delete("/{assistant_id}")
async def delete_assistant(assistant_id: str, session: Session) -> DeletedObject:
    await service.delete_assistant(session, assistant_id)
    return DeletedObject(id=assistant_id, object="assistant.deleted")
