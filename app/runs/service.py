"""Runs and run steps: the domain logic behind /v1/threads/{id}/runs (no HTTP here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import InvalidRequest, NotFound
from app.ids import now
from app.pagination import ListParams, Page, paginate
from app.runs.dispatch import RunDispatcher
from app.runs.events import EventHub, EventWriter
from app.runs.models import Run, RunStep
from app.runs.schemas import (
    RunUpdate,
    SubmitToolOutputs,
    render_run,
    render_step,
)
from app.runs.state import transition
from app.threads.models import Message
from app.threads.schemas import MessageObject
from app.threads.service import (
    get_thread,
)


@dataclass(frozen=True)
class RunSignals:
    """Where run changes are announced: events to streams, new runs to workers."""

    hub: EventHub
    dispatcher: RunDispatcher
    expiry_seconds: int  # a run waiting (queued, or for tool outputs) this long expires


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
        writer.emit("thread.message.incomplete", MessageObject.dump_row(message))
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
    await writer.commit(session)  # PostgreSQL: the requeued run NOTIFYs (migration 0008)
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
