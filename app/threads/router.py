from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.deps import DatabaseDep, ImageUrls, Index, Project, Sandbox, Session
from app.pagination import LIST_QUERY_OPENAPI, ListParams, list_params
from app.schemas import DeletedObject, ObjectResponse
from app.threads import service
from app.threads.schemas import (
    MessageCreate,
    MessageList,
    MessageObject,
    MessageUpdate,
    ThreadCreate,
    ThreadObject,
    ThreadUpdate,
)
from app.vector_stores.thread_stores import forget_stores

# Every route answers an ObjectResponse: serialised once (see app.schemas.ObjectResponse).
router = APIRouter(prefix="/threads", tags=["threads"])


@router.post("", response_model=ThreadObject)
async def create_thread(
    session: Session, project: Project, image_urls: ImageUrls, body: ThreadCreate | None = None
) -> ObjectResponse:
    body = body or ThreadCreate()
    await image_urls.check_messages(body.messages or [], "messages")
    thread = await service.create_thread(session, project, body)
    return ObjectResponse(ThreadObject.from_row(thread))


@router.get("/{thread_id}", response_model=ThreadObject)
async def get_thread(thread_id: str, session: Session, project: Project) -> ObjectResponse:
    return ObjectResponse(
        ThreadObject.from_row(await service.get_thread(session, project, thread_id))
    )


@router.post("/{thread_id}", response_model=ThreadObject)
async def modify_thread(
    thread_id: str, body: ThreadUpdate, session: Session, project: Project
) -> ObjectResponse:
    return ObjectResponse(
        ThreadObject.from_row(await service.update_thread(session, project, thread_id, body))
    )


@router.delete("/{thread_id}", response_model=DeletedObject)
async def delete_thread(
    thread_id: str, session: Session, project: Project, index: Index, sandbox: Sandbox
) -> ObjectResponse:
    await forget_stores(index, await service.delete_thread(session, project, thread_id))
    if sandbox is not None and sandbox.has_session(thread_id):
        # Here at once; a kernel in another process goes at its next reaping.
        await sandbox.shutdown(thread_id)
    return ObjectResponse(DeletedObject(id=thread_id, object="thread.deleted"))


@router.post("/{thread_id}/messages", response_model=MessageObject)
async def create_message(
    thread_id: str, body: MessageCreate, db: DatabaseDep, project: Project, image_urls: ImageUrls
) -> ObjectResponse:
    await image_urls.check_messages([body], "")
    return ObjectResponse(
        MessageObject.dump_row(await service.create_message(db, project, thread_id, body))
    )


@router.get("/{thread_id}/messages", response_model=MessageList, openapi_extra=LIST_QUERY_OPENAPI)
async def list_messages(
    thread_id: str,
    db: DatabaseDep,
    project: Project,
    params: Annotated[ListParams, Depends(list_params)],
    run_id: Annotated[str | None, Query()] = None,
) -> ObjectResponse:
    page = await service.list_messages(db, project, thread_id, params, run_id)
    return ObjectResponse(page.to_response(MessageObject.dump_row))


@router.get("/{thread_id}/messages/{message_id}", response_model=MessageObject)
async def get_message(
    thread_id: str, message_id: str, session: Session, project: Project
) -> ObjectResponse:
    return ObjectResponse(
        MessageObject.from_row(await service.get_message(session, project, thread_id, message_id))
    )


@router.post("/{thread_id}/messages/{message_id}", response_model=MessageObject)
async def modify_message(
    thread_id: str, message_id: str, body: MessageUpdate, session: Session, project: Project
) -> ObjectResponse:
    return ObjectResponse(
        MessageObject.from_row(
            await service.update_message(session, project, thread_id, message_id, body)
        )
    )


@router.delete("/{thread_id}/messages/{message_id}", response_model=DeletedObject)
async def delete_message(
    thread_id: str, message_id: str, session: Session, project: Project
) -> ObjectResponse:
    await service.delete_message(session, project, thread_id, message_id)
    return ObjectResponse(DeletedObject(id=message_id, object="thread.message.deleted"))
