from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from app.deps import Session
from app.pagination import ListParams, list_params
from app.schemas import DeletedObject
from app.threads import service
from app.threads.schemas import (
    MessageCreate,
    MessageObject,
    MessageUpdate,
    ThreadCreate,
    ThreadObject,
    ThreadUpdate,
)

router = APIRouter(prefix="/threads", tags=["threads"])


@router.post("")
async def create_thread(session: Session, body: ThreadCreate | None = None) -> ThreadObject:
    return ThreadObject.from_row(await service.create_thread(session, body or ThreadCreate()))


@router.get("/{thread_id}")
async def get_thread(thread_id: str, session: Session) -> ThreadObject:
    return ThreadObject.from_row(await service.get_thread(session, thread_id))


@router.post("/{thread_id}")
async def modify_thread(thread_id: str, body: ThreadUpdate, session: Session) -> ThreadObject:
    return ThreadObject.from_row(await service.update_thread(session, thread_id, body))


@router.delete("/{thread_id}")
async def delete_thread(thread_id: str, session: Session) -> DeletedObject:
    await service.delete_thread(session, thread_id)
    return DeletedObject(id=thread_id, object="thread.deleted")


@router.post("/{thread_id}/messages")
async def create_message(thread_id: str, body: MessageCreate, session: Session) -> MessageObject:
    return MessageObject.from_row(await service.create_message(session, thread_id, body))


@router.get("/{thread_id}/messages")
async def list_messages(
    thread_id: str,
    session: Session,
    params: Annotated[ListParams, Depends(list_params)],
    run_id: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    page = await service.list_messages(session, thread_id, params, run_id)
    return page.to_response(lambda row: MessageObject.from_row(row).model_dump())


@router.get("/{thread_id}/messages/{message_id}")
async def get_message(thread_id: str, message_id: str, session: Session) -> MessageObject:
    return MessageObject.from_row(await service.get_message(session, thread_id, message_id))


@router.post("/{thread_id}/messages/{message_id}")
async def modify_message(
    thread_id: str, message_id: str, body: MessageUpdate, session: Session
) -> MessageObject:
    return MessageObject.from_row(
        await service.update_message(session, thread_id, message_id, body)
    )


@router.delete("/{thread_id}/messages/{message_id}")
async def delete_message(thread_id: str, message_id: str, session: Session) -> DeletedObject:
    await service.delete_message(session, thread_id, message_id)
    return DeletedObject(id=message_id, object="thread.message.deleted")
