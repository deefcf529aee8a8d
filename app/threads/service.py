"""Threads and their messages: the domain logic behind /v1/threads (no HTTP here)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    insert,
    null,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import Database
from app.errors import InvalidRequest, NotFound
from app.files.service import get_files
from app.ids import new_id, next_seq, now
from app.pagination import ListParams, Page, first_page, first_pages, page_of
from app.prepared import Prepared, insert_row
from app.runs.models import active_run_in, active_run_of
from app.threads.models import Message, Thread
from app.threads.schemas import (
    MessageCreate,
    MessageUpdate,
    ThreadCreate,
    ThreadUpdate,
    content_to_stored,
)
from app.tool_resources import resolve_tool_resources
from app.vector_stores.thread_stores import attach_to_thread_store, drop_thread_stores


async def create_thread(session: AsyncSession, project_id: str, body: ThreadCreate) -> Thread:
    """Create the thread and its initial messages in one transaction."""
    thread = await create_thread_rows(session, project_id, body)
    await session.commit()
    return thread


async def create_thread_rows(session: AsyncSession, project_id: str, body: ThreadCreate) -> Thread:
    """Add the thread and its messages to the session, uncommitted."""
    thread = Thread(
        id=new_id("thread_"),
        project_id=project_id,
        tool_resources=await resolve_tool_resources(session, project_id, body.tool_resources),
        metadata_=body.metadata or {},
    )
    session.add(thread)
    await session.flush()  # no ORM relationship orders the inserts, so the thread goes first
    await add_messages(session, thread, [new_message(thread.id, m) for m in body.messages or []])
    return thread


async def add_messages(session: AsyncSession, thread: Thread, messages: list[Message]) -> None:
    """Add new messages to the thread (uncommitted): every attached file must be one of the
    project's (404 before anything is written); file_search ones go to the thread's store."""
    referenced = [file_id for message in messages for file_id in _referenced_files(message)]
    if referenced:
        await get_files(session, thread.project_id, referenced)
    session.add_all(messages)
    await attach_to_thread_store(session, thread, messages)


def names_files(messages: list[MessageCreate]) -> bool:
    """Whether any of these new messages attaches or shows a file (such messages need the
    session path: ownership checks and the thread's vector store)."""
    return any(_referenced_files(message) for message in messages)


# ---- Core, inside a caller's transaction (`Database.transact`): the run-creation hot path
# for requests that name no files and no tool resources.

_THREADS: Table = Thread.__table__  # type: ignore[assignment]
_MESSAGE_TABLE: Table = Message.__table__  # type: ignore[assignment]


# Takes the thread's row lock (an UPDATE that changes nothing): 0 rows if not the project's.
_LOCK_THREAD_ROW = Prepared(
    update(_THREADS)
    .where(_THREADS.c.id == bindparam("thread_id"), _THREADS.c.project_id == bindparam("owner"))
    .values(id=_THREADS.c.id)
)


def insert_thread(
    conn: Connection,
    project_id: str,
    metadata: dict[str, Any] | None,
    messages: list[MessageCreate],
) -> SimpleNamespace:
    """A new thread (no tool resources) and its plain messages; the thread as a plain row."""
    thread = SimpleNamespace(
        id=new_id("thread_"),
        project_id=project_id,
        created_at=now(),
        seq=next_seq(),
        tool_resources={},
        metadata_=metadata or {},
    )
    values = vars(thread).copy()
    values["metadata"] = values.pop("metadata_")
    insert_row(conn, _THREADS, values)
    insert_messages(conn, thread.id, messages)
    return thread


def insert_messages(conn: Connection, thread_id: str, messages: list[MessageCreate]) -> None:
    """Plain new messages (no files) into the thread."""
    for message in messages:
        values = _message_values(thread_id, message, None, None)
        insert_row(
            conn, _MESSAGE_TABLE, {_COLUMN_NAMES[key]: value for key, value in values.items()}
        )


def lock_thread_row(conn: Connection, project_id: str, thread_id: str) -> None:
    """`lock_thread` in Core: 404 unless the project's; its row locked until the commit."""
    if _LOCK_THREAD_ROW.execute(conn, {"thread_id": thread_id, "owner": project_id}).rowcount == 0:
        raise NotFound("thread", thread_id)


def _referenced_files(message: Message | MessageCreate) -> list[str]:
    """The file ids a new message names: attachments and image_file parts."""
    ids = [a["file_id"] if isinstance(a, dict) else a.file_id for a in message.attachments or []]
    content = message.content if isinstance(message.content, list) else []
    for part in content:
        part = part if isinstance(part, dict) else part.model_dump()
        if part.get("type") == "image_file":
            ids.append(part["image_file"]["file_id"])
    return ids


async def get_thread(session: AsyncSession, project_id: str, thread_id: str) -> Thread:
    thread = await session.get(Thread, thread_id)
    if thread is None or thread.project_id != project_id:
        raise NotFound("thread", thread_id)
    return thread


async def lock_thread(session: AsyncSession, project_id: str, thread_id: str) -> Thread:
    """The thread, its row locked until the transaction ends (PostgreSQL: the row; SQLite:
    the write lock), read after the lock: a check made now holds until the commit."""
    locked = await session.execute(
        update(Thread)
        .where(Thread.id == thread_id, Thread.project_id == project_id)
        .values(id=Thread.id)
        .execution_options(synchronize_session=False)
    )
    if locked.rowcount == 0:
        raise NotFound("thread", thread_id)
    thread = await session.get(Thread, thread_id, populate_existing=True)
    assert thread is not None
    return thread


async def update_thread(
    session: AsyncSession, project_id: str, thread_id: str, body: ThreadUpdate
) -> Thread:
    thread = await get_thread(session, project_id, thread_id)
    if "tool_resources" in body.model_fields_set:
        thread.tool_resources = await resolve_tool_resources(
            session, project_id, body.tool_resources
        )
    if "metadata" in body.model_fields_set:
        thread.metadata_ = body.metadata or {}
    await session.commit()
    return thread


async def delete_thread(session: AsyncSession, project_id: str, thread_id: str) -> list[str]:
    """Delete the thread and the vector stores its attachments made; returns those stores'
    ids (their chunks leave the index once this committed)."""
    store_ids = await drop_thread_stores(session, project_id, thread_id)
    # Messages, runs and steps go with it through ON DELETE CASCADE.
    result = await session.execute(
        delete(Thread).where(Thread.id == thread_id, Thread.project_id == project_id)
    )
    if result.rowcount == 0:
        raise NotFound("thread", thread_id)
    await session.commit()
    return store_ids


def new_message(
    thread_id: str,
    body: MessageCreate,
    *,
    run_id: str | None = None,
    assistant_id: str | None = None,
) -> Message:
    return Message(**_message_values(thread_id, body, run_id, assistant_id))


def _message_values(
    thread_id: str, body: MessageCreate, run_id: str | None, assistant_id: str | None
) -> dict[str, Any]:
    """A new message's columns by attribute name: all but the two it starts without, which
    stay SQL NULL (`incomplete_details` set to None would be stored as JSON null)."""
    at = now()
    return {
        "id": new_id("msg_"),
        "created_at": at,
        "seq": next_seq(),
        "thread_id": thread_id,
        "role": body.role,
        "content": content_to_stored(body.content),
        "status": "completed",
        "completed_at": at,
        "assistant_id": assistant_id,
        "run_id": run_id,
        "attachments": [a.model_dump() for a in body.attachments or []],
        "metadata_": body.metadata or {},
    }


_NULL_ON_CREATE = ("incomplete_details", "incomplete_at")


def _insert_message_if_open() -> Any:
    """INSERT INTO messages SELECT <:values> WHERE the thread exists and has no active run."""
    table = Message.__table__
    params = {
        c.key: null() if c.key in _NULL_ON_CREATE else bindparam(c.key, type_=c.type)
        for c in table.c
    }
    values = select(*params.values())
    thread_id = params["thread_id"]
    is_open = and_(
        exists().where(Thread.id == thread_id, Thread.project_id == bindparam("owner")),
        ~active_run_of(thread_id).exists(),
    )
    return insert(table).from_select(list(table.c), values.where(is_open))


_INSERT_MESSAGE_IF_OPEN = Prepared(_insert_message_if_open())
_LOCK_THREAD = Prepared(
    select(Thread.id)
    .where(Thread.id == bindparam("thread_id"), Thread.project_id == bindparam("owner"))
    .with_for_update(read=True)  # FOR SHARE: messages do not wait for each other
)
_COLUMN_NAMES = {attr.key: attr.columns[0].key for attr in Message.__mapper__.column_attrs}


async def create_message(
    db: Database, project_id: str, thread_id: str, body: MessageCreate
) -> Message | SimpleNamespace:
    """The new message: an ORM row when it names files, else its plain columns (no ORM
    instance on the common path; `MessageObject` renders either)."""
    if _referenced_files(body):
        async with db.sessionmaker() as session:
            return await _create_message_with_files(session, project_id, thread_id, body)
    values = _message_values(thread_id, body, None, None)
    params = {_COLUMN_NAMES[key]: value for key, value in values.items()} | {"owner": project_id}

    def insert_if_open(conn: Connection) -> None:
        # The checks and the insert in one statement: atomic on SQLite (the transaction holds
        # the write lock). PostgreSQL: the insert's snapshot would miss a run committed while
        # it waits; the thread's row lock, which run creation holds until it commits, orders
        # them.
        for _ in range(3):
            if conn.dialect.name == "postgresql":
                _LOCK_THREAD.execute(conn, {"thread_id": thread_id, "owner": project_id})
            if _INSERT_MESSAGE_IF_OPEN.execute(conn, params).rowcount == 1:
                return
            _require_thread(conn, project_id, thread_id)
            active = active_run_in(conn, thread_id)
            if active is not None:
                raise InvalidRequest(
                    f"Can't add messages to {thread_id} while a run {active} is active.",
                    param="thread_id",
                )
            # Neither missing nor busy now: its run ended in between. Try again.
        raise InvalidRequest(f"Can't add messages to {thread_id} right now.", param="thread_id")

    await db.transact(insert_if_open)
    return SimpleNamespace(**values, **dict.fromkeys(_NULL_ON_CREATE))


def _require_thread(conn: Connection, project_id: str, thread_id: str) -> None:
    found = conn.execute(
        select(_THREADS.c.id).where(_THREADS.c.id == thread_id, _THREADS.c.project_id == project_id)
    ).first()
    if found is None:
        raise NotFound("thread", thread_id)


async def _check_open_for_messages(
    session: AsyncSession, project_id: str, thread_id: str, *, lock: bool = False
) -> Thread:
    if lock:
        thread = await lock_thread(session, project_id, thread_id)
    else:
        thread = await get_thread(session, project_id, thread_id)
    active = await session.scalar(active_run_of(thread_id))
    if active is not None:
        raise InvalidRequest(
            f"Can't add messages to {thread_id} while a run {active} is active.", param="thread_id"
        )
    return thread


async def _create_message_with_files(
    session: AsyncSession, project_id: str, thread_id: str, body: MessageCreate
) -> Message:
    # Locked: two first attachments must not make two thread stores.
    thread = await _check_open_for_messages(session, project_id, thread_id, lock=True)
    message = new_message(thread_id, body)
    await add_messages(session, thread, [message])
    await session.commit()
    return message


def _thread_in(project_id: Any, thread_id: Any) -> Any:
    """The thread exists and is the project's: the condition every message query carries
    (values, or bound parameters)."""
    return exists().where(Thread.id == thread_id, Thread.project_id == project_id)


async def get_message(
    session: AsyncSession, project_id: str, thread_id: str, message_id: str
) -> Message:
    message = (
        await session.execute(
            select(Message).where(
                Message.id == message_id,
                Message.thread_id == thread_id,
                _thread_in(project_id, thread_id),
            )
        )
    ).scalar_one_or_none()
    if message is None:
        await get_thread(session, project_id, thread_id)
        raise NotFound("message", message_id)
    return message


async def update_message(
    session: AsyncSession, project_id: str, thread_id: str, message_id: str, body: MessageUpdate
) -> Message:
    message = await get_message(session, project_id, thread_id, message_id)
    if "metadata" in body.model_fields_set:
        message.metadata_ = body.metadata or {}
    await session.commit()
    return message


async def delete_message(
    session: AsyncSession, project_id: str, thread_id: str, message_id: str
) -> None:
    await get_message(session, project_id, thread_id, message_id)
    await session.execute(delete(Message).where(Message.id == message_id))
    await session.commit()


# A message's columns under their attribute names, read as plain rows through Core (no ORM
# objects, no ORM compilation): MessageObject.from_row reads either.
_MESSAGES = Message.__table__.c
_MESSAGE_COLUMNS = select(
    *(attr.columns[0].label(attr.key) for attr in Message.__mapper__.column_attrs)
)


# The newest (or oldest) messages of a thread, the common list: prepared, one per order.
_LATEST = first_pages(
    _MESSAGE_COLUMNS.where(
        _MESSAGES.thread_id == bindparam("thread_id"),
        _thread_in(bindparam("owner"), bindparam("thread_id")),
    ),
    _MESSAGES,
)


async def list_messages(
    db: Database,
    project_id: str,
    thread_id: str,
    params: ListParams,
    run_id: str | None = None,
) -> Page[Any]:
    cursor = params.after is not None or params.before is not None

    def read(conn: Connection) -> Page[Any]:
        if cursor:  # a missing thread is a 404 before a bad cursor is a 400
            _require_thread(conn, project_id, thread_id)
        if cursor or run_id is not None:
            where = [_MESSAGES.thread_id == thread_id, _thread_in(project_id, thread_id)]
            if run_id is not None:
                where.append(_MESSAGES.run_id == run_id)
            page = page_of(conn, _MESSAGES, params, where, base=_MESSAGE_COLUMNS)
        else:
            page = first_page(conn, _LATEST, params, {"thread_id": thread_id, "owner": project_id})
        if not page.items and not cursor:  # a message is proof enough that its thread exists
            _require_thread(conn, project_id, thread_id)
        return page

    return await db.transact(read, writes=False)
