"""Creating runs (POST /threads/{id}/runs, POST /threads/runs): the hot path of run
creation — the assistant and the quota read in one statement, then thread, messages, run
and its first events written in one transaction — and the hand-off to a worker."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Integer, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from app.assistants.service import assistant_row, select_assistant
from app.auth.quotas import QuotaExceeded
from app.db import Database, one_of
from app.errors import InvalidRequest
from app.ids import new_id, next_seq, now
from app.prepared import Prepared
from app.runs import store
from app.runs.events import Event, EventWriter
from app.runs.models import ACTIVE_STATUSES, Run, active_run_in, active_run_of
from app.runs.schemas import RunCreate, ThreadAndRunCreate, render_run
from app.runs.service import RunSignals
from app.schemas import dump_optional, dump_tools
from app.threads.schemas import ThreadCreate, ThreadObject
from app.threads.service import (
    add_messages,
    create_thread_rows,
    insert_messages,
    insert_thread,
    lock_thread,
    lock_thread_row,
    names_files,
    new_message,
)


@dataclass(frozen=True)
class NewRun:
    run: Run
    events: list[Event]  # its first events, as committed (a stream can start with them)


def _run_values(
    assistant: Any,
    project_id: str,
    thread_id: str,
    body: RunCreate | ThreadAndRunCreate,
    include: list[str],
    expiry_seconds: int,
) -> dict[str, Any]:
    """A new run's columns (by attribute name): the request's settings over the assistant's."""
    instructions = body.instructions if body.instructions is not None else assistant.instructions
    extra = getattr(body, "additional_instructions", None)
    if extra:
        instructions = f"{instructions}\n\n{extra}" if instructions else extra
    created = now()
    return {
        "project_id": project_id,
        "created_at": created,
        "seq": next_seq(),
        "thread_id": thread_id,
        "assistant_id": assistant.id,
        "status": "queued",
        "expires_at": created + expiry_seconds,
        "model": body.model or assistant.model,
        "instructions": instructions or "",
        "tools": dump_tools(body.tools) if body.tools is not None else assistant.tools,
        "metadata_": body.metadata or {},
        "temperature": body.temperature if body.temperature is not None else assistant.temperature,
        "top_p": body.top_p if body.top_p is not None else assistant.top_p,
        "max_prompt_tokens": body.max_prompt_tokens,
        "max_completion_tokens": body.max_completion_tokens,
        "truncation_strategy": (
            body.truncation_strategy.model_dump()
            if body.truncation_strategy
            else {"type": "auto", "last_messages": None}
        ),
        "tool_choice": dump_optional(body.tool_choice) if body.tool_choice is not None else "auto",
        "parallel_tool_calls": body.parallel_tool_calls,
        "response_format": (
            dump_optional(body.response_format)
            if body.response_format is not None
            else assistant.response_format
        ),
        "reasoning_effort": body.reasoning_effort or assistant.reasoning_effort,
        "include": include,
        "next_event_seq": 0,
        "interruptions": 0,
        "turns": 0,
    }


# The assistant, and how many runs its caller's project has queued, in progress or waiting
# (counted up to the quota): one statement for the two reads run creation starts with.
_ASSISTANT_AND_ACTIVE_RUNS = Prepared(
    select_assistant().add_columns(
        select(func.count())
        .select_from(
            select(Run.id)
            .where(Run.project_id == bindparam("owner"), one_of(Run.status, ACTIVE_STATUSES))
            .limit(bindparam("quota", type_=Integer))
            .subquery()
        )
        .scalar_subquery()
        .label("active_runs")
    )
)


@dataclass
class _NewRunRequest:
    """One run being created: what the request asked, and the run row as it is filled in."""

    signals: RunSignals
    project_id: str
    body: RunCreate | ThreadAndRunCreate
    include: list[str]
    max_active: int | None
    run: store.Row = field(default_factory=lambda: store.Row(id=new_id("run_")))
    assistant: Any = None  # its row, once `read_assistant` has read it

    def __post_init__(self) -> None:
        self.writer = EventWriter(self.signals.hub, self.run.id, 0)

    def read_assistant(self, conn: Connection) -> None:
        """The assistant the run takes its settings from, and the quota check: read before
        anything is written (on PostgreSQL the writes then go as one statement)."""
        if self.max_active is None:
            self.assistant = assistant_row(conn, self.project_id, self.body.assistant_id)
            return
        self.assistant = assistant_row(
            conn,
            self.project_id,
            self.body.assistant_id,
            _ASSISTANT_AND_ACTIVE_RUNS,
            {"quota": self.max_active},
        )
        if self.assistant.active_runs >= self.max_active:
            raise QuotaExceeded("active runs", self.max_active)

    def insert(self, conn: Connection, thread_id: str) -> None:
        """The run and its first events, inside the caller's transaction (Core; on SQLite in
        the database thread, so nothing here touches the event loop), after
        `read_assistant`."""
        assistant = self.assistant
        values = _run_values(
            assistant,
            self.project_id,
            thread_id,
            self.body,
            self.include,
            self.signals.expiry_seconds,
        )
        store.fill_run(self.run, values)
        self.writer.emit("thread.run.created", render_run(self.run))
        self.writer.emit("thread.run.queued", render_run(self.run))
        self.run.next_event_seq = self.writer.stored_next = self.writer.seq  # with the row
        store.insert_run(conn, self.run)
        self.writer.write(conn)  # PostgreSQL: the new run NOTIFYs itself (migration 0008)

    async def committed(
        self, db: Database, thread_id: str | None, commit: Awaitable[Any]
    ) -> NewRun:
        """Await the transaction that inserts the run, then hand it to a worker and publish
        its events; a worker of this process took it before the commit (no claim needed)."""
        dispatcher = self.signals.dispatcher
        dispatcher.offer(self.run)
        try:
            await commit
        except IntegrityError:
            dispatcher.withdraw(self.run.id)
            if thread_id is None:  # a new thread: no other run could be active in it
                raise
            # The partial unique index: this thread already has an active run.
            active = await db.transact(active_run_in, thread_id, writes=False)
            raise busy_thread(thread_id, active) from None
        except BaseException:
            dispatcher.withdraw(self.run.id)
            raise
        self.writer.published()
        dispatcher.queued(self.run.id)
        return NewRun(self.run, self.writer.last_published)


async def _in_session(session: AsyncSession, new: _NewRunRequest, thread_id: str) -> None:
    """The run's part of a transaction whose other rows went through the ORM session."""
    await session.flush()  # the thread and messages first (foreign keys)

    def run_rows(sync: Session) -> None:
        conn = sync.connection()
        new.read_assistant(conn)
        new.insert(conn, thread_id)

    await session.run_sync(run_rows)
    await session.commit()


async def create_run(
    db: Database,
    signals: RunSignals,
    project_id: str,
    thread_id: str,
    body: RunCreate,
    include: list[str],
    max_active: int | None = None,
) -> NewRun:
    new = _NewRunRequest(signals, project_id, body, include, max_active)
    messages = body.additional_messages or []
    if not names_files(messages):
        # The hot path: one transaction of Core statements (one trip on SQLite).
        def work(conn: Connection) -> None:
            # Locked until the run commits: a message being added meanwhile waits for it.
            lock_thread_row(conn, project_id, thread_id)
            _refuse_if_busy(thread_id, active_run_in(conn, thread_id))
            new.read_assistant(conn)
            insert_messages(conn, thread_id, messages)
            new.insert(conn, thread_id)

        return await new.committed(db, thread_id, db.transact(work))

    async def with_files() -> None:
        async with db.sessionmaker() as session:
            thread = await lock_thread(session, project_id, thread_id)
            _refuse_if_busy(thread_id, await session.scalar(active_run_of(thread_id)))
            await add_messages(session, thread, [new_message(thread_id, m) for m in messages])
            await _in_session(session, new, thread_id)

    return await new.committed(db, thread_id, with_files())


def _refuse_if_busy(thread_id: str, active: str | None) -> None:
    if active is not None:
        raise busy_thread(thread_id, active)


def busy_thread(thread_id: str, active: str | None) -> InvalidRequest:
    """The refusal of a second run on a thread (OpenAI's wording)."""
    return InvalidRequest(f"Thread {thread_id} already has an active run {active}.")


async def create_thread_and_run(
    db: Database,
    signals: RunSignals,
    project_id: str,
    body: ThreadAndRunCreate,
    include: list[str],
    max_active: int | None = None,
) -> NewRun:
    new = _NewRunRequest(signals, project_id, body, include, max_active)
    thread_body = body.thread or ThreadCreate()
    if body.tool_resources is not None:
        thread_body = thread_body.model_copy(update={"tool_resources": body.tool_resources})
    messages = thread_body.messages or []
    if thread_body.tool_resources is None and not names_files(messages):

        def work(conn: Connection) -> str:
            new.read_assistant(conn)
            thread = insert_thread(conn, project_id, thread_body.metadata, messages)
            new.writer.emit("thread.created", ThreadObject.from_row(thread).model_dump())
            new.insert(conn, thread.id)
            return thread.id

        return await new.committed(db, None, db.transact(work))

    async def with_files() -> None:
        async with db.sessionmaker() as session:
            thread = await create_thread_rows(session, project_id, thread_body)
            new.writer.emit("thread.created", ThreadObject.from_row(thread).model_dump())
            await _in_session(session, new, thread.id)

    return await new.committed(db, None, with_files())
