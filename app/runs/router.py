from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query
from sse_starlette import EventSourceResponse

from app.auth.keys import Caller
from app.auth.quotas import ProjectLimits, StreamSlot
from app.deps import (
    CallerDep,
    DatabaseDep,
    ImageUrls,
    Limits,
    Models,
    Project,
    Session,
    Signals,
)
from app.errors import InvalidRequest
from app.image_urls import ImageUrlPolicy
from app.llm.routing import ModelRouter
from app.pagination import LIST_QUERY_OPENAPI, ListParams, list_params
from app.runs import creation, service
from app.runs.schemas import (
    RunCreate,
    RunObject,
    RunUpdate,
    SubmitToolOutputs,
    ThreadAndRunCreate,
    render_run,
    render_step,
)
from app.runs.streaming import run_event_stream

router = APIRouter(prefix="/threads", tags=["runs"])


@contextmanager
def _given_back_on_error(slot: StreamSlot | None) -> Iterator[None]:
    """A stream slot is the stream's once it starts; a request that fails first frees it."""
    try:
        yield
    except BaseException:
        if slot is not None:
            slot.release()
        raise


IncludeParam = Annotated[
    list[Literal["step_details.tool_calls[*].file_search.results[*].content"]],
    Query(alias="include[]"),
]


@dataclass(frozen=True)
class NewRunChecks:
    """What every request that starts a run checks before anything is written: the model
    (the project's allowlist), image URLs in new messages, and a stream slot when it streams."""

    caller: Caller
    limits: ProjectLimits
    image_urls: ImageUrlPolicy
    models: ModelRouter

    async def admit(
        self, body: RunCreate | ThreadAndRunCreate, messages: list[Any], param: str
    ) -> StreamSlot | None:
        if body.model is not None:
            await self.models.require_known(body.model, self.caller.models)
        await self.image_urls.check_messages(messages, param)
        return self.limits.stream_slot(body.stream)


async def new_run_checks(
    caller: CallerDep, limits: Limits, image_urls: ImageUrls, models: Models
) -> NewRunChecks:
    return NewRunChecks(caller, limits, image_urls, models)


NewRun = Annotated[NewRunChecks, Depends(new_run_checks)]


def _answer(
    new: creation.NewRun, slot: StreamSlot | None, db: DatabaseDep, signals: Signals
) -> RunObject | EventSourceResponse:
    if slot is not None:
        return run_event_stream(db, signals.hub, new.run.id, known=new.events, slot=slot)
    return RunObject(**render_run(new.run))


@router.post("/runs", response_model=None)
async def create_thread_and_run(
    body: ThreadAndRunCreate, checks: NewRun, signals: Signals, db: DatabaseDep
) -> RunObject | EventSourceResponse:
    messages = (body.thread.messages or []) if body.thread else []
    slot = await checks.admit(body, messages, "thread.messages")
    with _given_back_on_error(slot):
        new = await creation.create_thread_and_run(
            db, signals, checks.caller.project_id, body, [], checks.limits.active_runs
        )
    return _answer(new, slot, db, signals)


@router.post("/{thread_id}/runs", response_model=None)
async def create_run(
    thread_id: str,
    body: RunCreate,
    checks: NewRun,
    signals: Signals,
    db: DatabaseDep,
    include: IncludeParam = [],  # noqa: B006 (FastAPI copies defaults)
) -> RunObject | EventSourceResponse:
    slot = await checks.admit(body, body.additional_messages or [], "additional_messages")
    with _given_back_on_error(slot):
        new = await creation.create_run(
            db,
            signals,
            checks.caller.project_id,
            thread_id,
            body,
            list(include),
            checks.limits.active_runs,
        )
    return _answer(new, slot, db, signals)


@router.get("/{thread_id}/runs", openapi_extra=LIST_QUERY_OPENAPI)
async def list_runs(
    thread_id: str,
    session: Session,
    project: Project,
    params: Annotated[ListParams, Depends(list_params)],
) -> dict[str, Any]:
    return (await service.list_runs(session, project, thread_id, params)).to_response(render_run)


@router.get("/{thread_id}/runs/{run_id}", response_model=None)
async def get_run(
    thread_id: str,
    run_id: str,
    session: Session,
    project: Project,
    limits: Limits,
    signals: Signals,
    db: DatabaseDep,
    stream: bool = False,
    last_event_id: Annotated[str | None, Header()] = None,
) -> RunObject | EventSourceResponse:
    """`?stream=true` (an extension) follows the run's events from the start, or after the
    `Last-Event-ID` header's event: a client whose stream broke resumes where it was."""
    run = await service.get_run(session, project, thread_id, run_id)
    if not stream:
        return RunObject(**render_run(run))
    after = -1
    if last_event_id:
        try:
            after = int(last_event_id)
        except ValueError:
            after = run.next_event_seq  # not a number: as invalid as one never issued
        if after >= run.next_event_seq:  # no event with this id was ever sent
            raise InvalidRequest(
                f"Invalid Last-Event-ID {last_event_id!r}: expected an event id from this "
                "run's stream.",
                param="Last-Event-ID",
            )
    # The session would hold a pooled connection (and, on SQLite, a read snapshot that keeps
    # the WAL from resetting) for as long as the stream lasts: give it back now.
    await session.close()
    return run_event_stream(db, signals.hub, run.id, after, slot=limits.stream_slot(True))


@router.post("/{thread_id}/runs/{run_id}")
async def modify_run(
    thread_id: str, run_id: str, body: RunUpdate, session: Session, project: Project
) -> RunObject:
    run = await service.update_run(session, project, thread_id, run_id, body)
    return RunObject(**render_run(run))


@router.post("/{thread_id}/runs/{run_id}/cancel")
async def cancel_run(
    thread_id: str, run_id: str, session: Session, project: Project, signals: Signals
) -> RunObject:
    run = await service.cancel_run(session, signals, project, thread_id, run_id)
    return RunObject(**render_run(run))


@router.post("/{thread_id}/runs/{run_id}/submit_tool_outputs", response_model=None)
async def submit_tool_outputs(
    thread_id: str,
    run_id: str,
    body: SubmitToolOutputs,
    session: Session,
    project: Project,
    limits: Limits,
    signals: Signals,
    db: DatabaseDep,
) -> RunObject | EventSourceResponse:
    slot = limits.stream_slot(body.stream)
    with _given_back_on_error(slot):
        run, first_seq = await service.submit_tool_outputs(
            session, signals, project, thread_id, run_id, body
        )
    if slot is not None:
        return run_event_stream(db, signals.hub, run.id, first_seq - 1, slot=slot)
    return RunObject(**render_run(run))


@router.get("/{thread_id}/runs/{run_id}/steps", openapi_extra=LIST_QUERY_OPENAPI)
async def list_run_steps(
    thread_id: str,
    run_id: str,
    session: Session,
    project: Project,
    params: Annotated[ListParams, Depends(list_params)],
    include: IncludeParam = [],  # noqa: B006
) -> dict[str, Any]:
    page = await service.list_steps(session, project, thread_id, run_id, params)
    return page.to_response(lambda step: render_step(step, list(include)))


@router.get("/{thread_id}/runs/{run_id}/steps/{step_id}")
async def get_run_step(
    thread_id: str,
    run_id: str,
    step_id: str,
    session: Session,
    project: Project,
    include: IncludeParam = [],  # noqa: B006
) -> dict[str, Any]:
    step = await service.get_step(session, project, thread_id, run_id, step_id)
    return render_step(step, list(include))
