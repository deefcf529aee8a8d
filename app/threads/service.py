"""Threads and their messages: the domain logic behind /v1/threads (no HTTP here)."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import InvalidRequest, NotFound
from app.ids import new_id, now
from app.pagination import ListParams, Page, paginate
from app.runs.models import ACTIVE_STATUSES, Run
from app.threads.models import Message, Thread
from app.threads.schemas import (
    MessageCreate,
    MessageUpdate,
    ThreadCreate,
    ThreadUpdate,
    content_to_stored,
)
from app.tool_resources import resolve_tool_resources
from app.vector_stores.thread_stores import attach_to_thread_store


async def create_thread(session: AsyncSession, body: ThreadCreate) -> Thread:
    """Create the thread and its initial messages in one transaction."""
    thread = await create_thread_rows(session, body)
    await session.commit()
    return thread


async def create_thread_rows(session: AsyncSession, body: ThreadCreate) -> Thread:
    """Add the thread and its messages to the session, uncommitted."""
    thread = Thread(
        id=new_id("thread_"),
        tool_resources=await resolve_tool_resources(session, body.tool_resources),
        metadata_=body.metadata or {},
    )
    session.add(thread)
    await session.flush()  # no ORM relationship orders the inserts, so the thread goes first
    messages = [new_message(thread.id, message) for message in body.messages or []]
    session.add_all(messages)
    await attach_to_thread_store(session, thread, messages)
    return thread


async def get_thread(session: AsyncSession, thread_id: str) -> Thread:
    thread = await session.get(Thread, thread_id)
    if thread is None:
        raise NotFound("thread", thread_id)
    return thread


async def update_thread(session: AsyncSession, thread_id: str, body: ThreadUpdate) -> Thread:
    thread = await get_thread(session, thread_id)
    if "tool_resources" in body.model_fields_set:
        thread.tool_resources = await resolve_tool_resources(session, body.tool_resources)
    if "metadata" in body.model_fields_set:
        thread.metadata_ = body.metadata or {}
    await session.commit()
    return thread


async def delete_thread(session: AsyncSession, thread_id: str) -> None:
    # Messages, runs and steps go with it through ON DELETE CASCADE.
    result = await session.execute(delete(Thread).where(Thread.id == thread_id))
    if result.rowcount == 0:
        raise NotFound("thread", thread_id)
    await session.commit()


def new_message(
    thread_id: str,
    body: MessageCreate,
    *,
    run_id: str | None = None,
    assistant_id: str | None = None,
) -> Message:
    return Message(
        id=new_id("msg_"),
        thread_id=thread_id,
        role=body.role,
        content=content_to_stored(body.content),
        status="completed",
        completed_at=now(),
        run_id=run_id,
        assistant_id=assistant_id,
        attachments=[a.model_dump() for a in body.attachments or []],
        metadata_=body.metadata or {},
    )


async def create_message(session: AsyncSession, thread_id: str, body: MessageCreate) -> Message:
    thread = await get_thread(session, thread_id)
    active = await session.scalar(
        select(Run.id).where(Run.thread_id == thread_id, Run.status.in_(ACTIVE_STATUSES))
    )
    if active is not None:
        raise InvalidRequest(
            f"Can't add messages to {thread_id} while a run {active} is active.", param="thread_id"
        )
    message = new_message(thread_id, body)
    session.add(message)
    await attach_to_thread_store(session, thread, [message])
    await session.commit()
    return message


async def get_message(session: AsyncSession, thread_id: str, message_id: str) -> Message:
    message = (
        await session.execute(
            select(Message).where(Message.id == message_id, Message.thread_id == thread_id)
        )
    ).scalar_one_or_none()
    if message is None:
        await get_thread(session, thread_id)
        raise NotFound("message", message_id)
    return message


async def update_message(
    session: AsyncSession, thread_id: str, message_id: str, body: MessageUpdate
) -> Message:
    message = await get_message(session, thread_id, message_id)
    if "metadata" in body.model_fields_set:
        message.metadata_ = body.metadata or {}
    await session.commit()
    return message


async def delete_message(session: AsyncSession, thread_id: str, message_id: str) -> None:
    await get_message(session, thread_id, message_id)
    await session.execute(delete(Message).where(Message.id == message_id))
    await session.commit()


async def list_messages(
    session: AsyncSession, thread_id: str, params: ListParams, run_id: str | None = None
) -> Page[Message]:
    await get_thread(session, thread_id)
    where = [Message.thread_id == thread_id]
    if run_id is not None:
        where.append(Message.run_id == run_id)
    return await paginate(session, Message, params, *where)
