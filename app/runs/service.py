"""Runs and run steps: the domain logic behind /v1/threads/{id}/runs (no HTTP here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.assistants.service import get_assistant
from app.auth.quotas import QuotaExceeded
from app.errors import InvalidRequest, NotFound
from app.ids import new_id, now
from app.pagination import ListParams, Page, paginate
from app.runs.dispatch import RunDispatcher
from app.runs.events import Event, EventHub, EventWriter
from app.runs.models import ACTIVE_STATUSES, Run, RunStep
from app.runs.schemas import (
    RunCreate,
    RunUpdate,
    SubmitToolOutputs,
    ThreadAndRunCreate,
    render_run,
    render_step,
)
from app.runs.state import transition
from app.schemas import dump_optional, dump_tools
from app.threads.models import Message
from app.threads.schemas import MessageObject, ThreadCreate, ThreadObject
from app.threads.service import (
    add_messages,
    create_thread_rows,
    get_thread,
    lock_thread,
    new_message,
)


@dataclass(frozen=True)
class NewRun:
    run: Run
    events: list[Event]  # its first events, as committed (a stream can start with them)


@dataclass(frozen=True)
class RunSignals:
    """Where run changes are announced: events to streams, new runs to workers."""

    hub: EventHub
    dispatcher: RunDispatcher
    expiry_seconds: int  # a run waiting (queued, or for tool outputs) this long expires


async def active_run_id(session: AsyncSession, thread_id: str) -> str | None:
    return await session.scalar(
        select(Run.id).where(Run.thread_id == thread_id, Run.status.in_(ACTIVE_STATUSES))
    )


async def _build_run(
    session: AsyncSession,
    project_id: str,
    thread_id: str,
    body: RunCreate | ThreadAndRunCreate,
    include: list[str],
    expiry_seconds: int,
) -> Run:
    assistant = await get_assistant(session, project_id, body.assistant_id)
    instructions = body.instructions if body.instructions is not None else assistant.instructions
    extra = getattr(body, "additional_instructions", None)
    if extra:
        instructions = f"{instructions}\n\n{extra}" if instructions else extra
    created = now()
    return Run(
        id=new_id("run_"),
        project_id=project_id,
        created_at=created,
        thread_id=thread_id,
        assistant_id=assistant.id,
        status="queued",
        expires_at=created + expiry_seconds,
        model=body.model or assistant.model,
        instructions=instructions or "",
        tools=dump_tools(body.tools) if body.tools is not None else assistant.tools,
        metadata_=body.metadata or {},
        temperature=body.temperature if body.temperature is not None else assistant.temperature,
        top_p=body.top_p if body.top_p is not None else assistant.top_p,
        max_prompt_tokens=body.max_prompt_tokens,
        max_completion_tokens=body.max_completion_tokens,
        truncation_strategy=(
            body.truncation_strategy.model_dump()
            if body.truncation_strategy
            else {"type": "auto", "last_messages": None}
        ),
        tool_choice=dump_optional(body.tool_choice) if body.tool_choice is not None else "auto",
        parallel_tool_calls=body.parallel_tool_calls,
        response_format=(
            dump_optional(body.response_format)
            if body.response_format is not None
            else assistant.response_format
        ),
        reasoning_effort=body.reasoning_effort or assistant.reasoning_effort,
        include=include,
        # Set here, not left to server defaults: the object is handed to a worker as it is.
        interruptions=0,
        turns=0,
    )


async def _commit_new_run(
    session: AsyncSession, signals: RunSignals, run: Run, writer: EventWriter
) -> NewRun:
    signals.dispatcher.offer(run)
    session.add(run)
    writer.emit("thread.run.created", render_run(run))
    writer.emit("thread.run.queued", render_run(run))
    run.next_event_seq = writer.stored_next = writer.seq  # inserted with the row
    try:
        await writer.commit(session, notify_run_queued=True)
        signals.dispatcher.queued(run.id)
    except IntegrityError:
        # The partial unique index: this thread already has an active run.
        signals.dispatcher.withdraw(run.id)
        await session.rollback()
        active = await active_run_id(session, run.thread_id)
        raise InvalidRequest(
            f"Thread {run.thread_id} already has an active run {active}.", param="thread_id"
        ) from None
    return NewRun(run, writer.last_published)


async def check_active_runs(session: AsyncSession, project_id: str, quota: int | None) -> None:
    """429 when the project already has `quota` runs queued, in progress or waiting."""
    if quota is None:
        return
    count = await session.scalar(
        select(func.count())
        .select_from(Run)
        .where(Run.project_id == project_id, Run.status.in_(ACTIVE_STATUSES))
    )
    if (count or 0) >= quota:
        raise QuotaExceeded("active runs", quota)


async def create_run(
    session: AsyncSession,
    signals: RunSignals,
    project_id: str,
    thread_id: str,
    body: RunCreate,
    include: list[str],
    max_active: int | None = None,
) -> NewRun:
    # PostgreSQL: hold the thread's row until the run commits, so a message being added
    # meanwhile waits and then sees the run (SQLite: the message insert is one statement).
    sqlite = session.bind.dialect.name == "sqlite"
    thread = await (get_thread if sqlite else lock_thread)(session, project_id, thread_id)
    active = await active_run_id(session, thread_id)
    if active is not None:
        raise InvalidRequest(f"Thread {thread_id} already has an active run {active}.")
    await check_active_runs(session, project_id, max_active)
    run = await _build_run(session, project_id, thread_id, body, include, signals.expiry_seconds)
    messages = [new_message(thread_id, message) for message in body.additional_messages or []]
    await add_messages(session, thread, messages)
    return await _commit_new_run(session, signals, run, EventWriter(signals.hub, run.id, 0))


async def create_thread_and_run(
    session: AsyncSession,
    signals: RunSignals,
    project_id: str,
    body: ThreadAndRunCreate,
    include: list[str],
    max_active: int | None = None,
) -> NewRun:
    await check_active_runs(session, project_id, max_active)
    thread_body = body.thread or ThreadCreate()
    if body.tool_resources is not None:
        thread_body = thread_body.model_copy(update={"tool_resources": body.tool_resources})
    thread = await create_thread_rows(session, project_id, thread_body)
    run = await _build_run(session, project_id, thread.id, body, include, signals.expiry_seconds)
    writer = EventWriter(signals.hub, run.id, 0)
    writer.emit("thread.created", ThreadObject.from_row(thread).model_dump())
    return await _commit_new_run(session, signals, run, writer)


async def get_run(session: AsyncSession, project_id: str, thread_id: str, run_id: str) -> Run:
    run = await session.scalar(
        select(Run).where(
            Run.id == run_id, Run.thread_id == thread_id, Run.project_id == project_id
        )
    )
    if run is None:
        await get_thread(session, project_id, thread_id)
        raise NotFound("run", run_id)
    return run


async def list_runs(
    session: AsyncSession, project_id: str, thread_id: str, params: ListParams
) -> Page[Run]:
    await get_thread(session, project_id, thread_id)
    return await paginate(session, Run, params, Run.thread_id == thread_id)


async def update_run(
    session: AsyncSession, project_id: str, thread_id: str, run_id: str, body: RunUpdate
) -> Run:
    run = await get_run(session, project_id, thread_id, run_id)
    if "metadata" in body.model_fields_set:
        run.metadata_ = body.metadata or {}
    await session.commit()
    return run


async def cancel_run(
    session: AsyncSession, signals: RunSignals, project_id: str, thread_id: str, run_id: str
) -> Run:
    run = await get_run(session, project_id, thread_id, run_id)
    writer = EventWriter(signals.hub, run.id, run.next_event_seq)
    # Nobody executes a queued run without a lease, nor one waiting for tool outputs:
    # those end now. A run being executed is asked to stop and ends at its next chunk.
    if run.status == "requires_action" or (run.status == "queued" and run.lease_owner is None):
        if await finish_run(session, run, writer, "cancelled"):
            return run
    if run.status in ("queued", "in_progress") and await transition(session, run, "cancelling"):
        # The executor owns this run's event stream: it announces cancelling and cancelled.
        await session.commit()
        # A worker in this process stops at once; others notice when they poll.
        signals.dispatcher.cancel_requested(run.id)
        return run
    if run.status == "cancelling":
        return run
    raise InvalidRequest(f"Cannot cancel run with status '{run.status}'.", param="run_id")


# How an ending run leaves its open steps, and why its unfinished messages stopped.
_ENDINGS: dict[str, tuple[str, str]] = {
    "cancelled": ("cancelled", "run_cancelled"),
    "failed": ("failed", "run_failed"),
    "expired": ("expired", "run_expired"),
    "incomplete": ("completed", "max_tokens"),
}


async def finish_run(
    session: AsyncSession,
    run: Run,
    writer: EventWriter,
    status: str,
    *,
    last_error: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """End the run (cancelled, failed, expired, incomplete): close its open steps and
    messages, then announce the new status. False if its status did not allow it."""
    step_status, message_reason = _ENDINGS[status]
    if last_error is not None:
        fields["last_error"] = last_error
    if not await transition(session, run, status, required_action=None, **fields):
        return False
    stamp = {
        "cancelled": "cancelled_at",
        "failed": "failed_at",
        "expired": "expired_at",
        "completed": "completed_at",
    }[step_status]
    for step in (
        await session.scalars(
            select(RunStep).where(RunStep.run_id == run.id, RunStep.status == "in_progress")
        )
    ).all():
        step.status = step_status
        setattr(step, stamp, now())
        if step_status == "failed" and last_error is not None:
            step.last_error = last_error
        writer.emit(f"thread.run.step.{step_status}", render_step(step))
    for message in (
        await session.scalars(
            select(Message).where(Message.run_id == run.id, Message.status == "in_progress")
        )
    ).all():
        message.status = "incomplete"
        message.incomplete_at = now()
        message.incomplete_details = {"reason": message_reason}
        writer.emit("thread.message.incomplete", MessageObject.from_row(message).model_dump())
    writer.emit(f"thread.run.{status}", render_run(run))
    await writer.commit(session)
    return True


async def submit_tool_outputs(
    session: AsyncSession,
    signals: RunSignals,
    project_id: str,
    thread_id: str,
    run_id: str,
    body: SubmitToolOutputs,
) -> tuple[Run, int]:
    """Resume the run with the outputs; returns it and the number of its first new event."""
    run = await get_run(session, project_id, thread_id, run_id)
    if run.status != "requires_action" or not run.required_action:
        raise InvalidRequest(
            f'Runs in status "{run.status}" do not accept tool outputs.', param="run_id"
        )
    pending = [c["id"] for c in run.required_action["submit_tool_outputs"]["tool_calls"]]
    outputs: dict[str, str] = {}
    for i, item in enumerate(body.tool_outputs):
        if item.tool_call_id is None:
            raise InvalidRequest(
                f"Missing required parameter: 'tool_outputs[{i}].tool_call_id'.",
                param=f"tool_outputs[{i}].tool_call_id",
                code="missing_required_parameter",
            )
        if item.tool_call_id not in pending:
            raise InvalidRequest(
                f"Invalid tool_call_id: {item.tool_call_id}. No tool call with this id is "
                "waiting for output.",
                param=f"tool_outputs[{i}].tool_call_id",
            )
        outputs[item.tool_call_id] = item.output or ""
    missing = [call_id for call_id in pending if call_id not in outputs]
    if missing:
        raise InvalidRequest(
            f"Expected tool outputs for call_ids {pending}, got {list(outputs)}.",
            param="tool_outputs",
        )
    step = await session.scalar(
        select(RunStep)
        .where(
            RunStep.run_id == run.id, RunStep.type == "tool_calls", RunStep.status == "in_progress"
        )
        .order_by(RunStep.seq.desc())
    )
    writer = EventWriter(signals.hub, run.id, run.next_event_seq)
    first_seq = writer.seq
    if not await transition(session, run, "queued", required_action=None):
        raise InvalidRequest(
            f'Runs in status "{run.status}" do not accept tool outputs.', param="run_id"
        )
    if step is not None:
        calls = [
            {**call, "function": {**call["function"], "output": outputs.get(call["id"])}}
            if call.get("type") == "function" and call["id"] in outputs
            else call
            for call in step.step_details["tool_calls"]
        ]
        step.step_details = {"type": "tool_calls", "tool_calls": calls}
        step.status = "completed"
        step.completed_at = now()
        writer.emit("thread.run.step.completed", render_step(step))
    writer.emit("thread.run.queued", render_run(run))
    await writer.commit(session, notify_run_queued=True)
    signals.dispatcher.queued(run.id)
    return run, first_seq


async def list_steps(
    session: AsyncSession, project_id: str, thread_id: str, run_id: str, params: ListParams
) -> Page[RunStep]:
    await get_run(session, project_id, thread_id, run_id)
    return await paginate(session, RunStep, params, RunStep.run_id == run_id)


async def get_step(
    session: AsyncSession, project_id: str, thread_id: str, run_id: str, step_id: str
) -> RunStep:
    await get_run(session, project_id, thread_id, run_id)
    step = await session.scalar(
        select(RunStep).where(RunStep.id == step_id, RunStep.run_id == run_id)
    )
    if step is None:
        raise NotFound("run step", step_id)
    return step
