from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from sse_starlette import EventSourceResponse

from app.deps import Models, Session
from app.pagination import ListParams, list_params
from app.runs import service
from app.runs.events import next_seq
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

IncludeParam = Annotated[
    list[Literal["step_details.tool_calls[*].file_search.results[*].content"]],
    Query(alias="include[]"),
]


def _stream(request: Request, run_id: str, after_seq: int = -1) -> EventSourceResponse:
    return run_event_stream(request.app.state.db, request.app.state.hub, run_id, after_seq)


@router.post("/runs", response_model=None)
async def create_thread_and_run(
    body: ThreadAndRunCreate, session: Session, request: Request, models: Models
) -> RunObject | EventSourceResponse:
    if body.model is not None:
        await models.require_known(body.model)
    run = await service.create_thread_and_run(session, request.app.state.hub, body, [])
    if body.stream:
        return _stream(request, run.id)
    return RunObject(**render_run(run))


@router.post("/{thread_id}/runs", response_model=None)
async def create_run(
    thread_id: str,
    body: RunCreate,
    session: Session,
    request: Request,
    models: Models,
    include: IncludeParam = [],  # noqa: B006 (FastAPI copies defaults)
) -> RunObject | EventSourceResponse:
    if body.model is not None:
        await models.require_known(body.model)
    run = await service.create_run(session, request.app.state.hub, thread_id, body, list(include))
    if body.stream:
        return _stream(request, run.id)
    return RunObject(**render_run(run))


@router.get("/{thread_id}/runs")
async def list_runs(
    thread_id: str, session: Session, params: Annotated[ListParams, Depends(list_params)]
) -> dict[str, Any]:
    return (await service.list_runs(session, thread_id, params)).to_response(render_run)


@router.get("/{thread_id}/runs/{run_id}")
async def get_run(thread_id: str, run_id: str, session: Session) -> RunObject:
    return RunObject(**render_run(await service.get_run(session, thread_id, run_id)))


@router.post("/{thread_id}/runs/{run_id}")
async def modify_run(thread_id: str, run_id: str, body: RunUpdate, session: Session) -> RunObject:
    return RunObject(**render_run(await service.update_run(session, thread_id, run_id, body)))


@router.post("/{thread_id}/runs/{run_id}/cancel")
async def cancel_run(thread_id: str, run_id: str, session: Session, request: Request) -> RunObject:
    run = await service.cancel_run(session, request.app.state.hub, thread_id, run_id)
    return RunObject(**render_run(run))


@router.post("/{thread_id}/runs/{run_id}/submit_tool_outputs", response_model=None)
async def submit_tool_outputs(
    thread_id: str, run_id: str, body: SubmitToolOutputs, session: Session, request: Request
) -> RunObject | EventSourceResponse:
    # Nobody else writes a run's events while it waits for outputs, so this is where ours start.
    first_seq = await next_seq(session, run_id)
    run = await service.submit_tool_outputs(session, request.app.state.hub, thread_id, run_id, body)
    if body.stream:
        return _stream(request, run.id, first_seq - 1)
    return RunObject(**render_run(run))


@router.get("/{thread_id}/runs/{run_id}/steps")
async def list_run_steps(
    thread_id: str,
    run_id: str,
    session: Session,
    params: Annotated[ListParams, Depends(list_params)],
    include: IncludeParam = [],  # noqa: B006
) -> dict[str, Any]:
    page = await service.list_steps(session, thread_id, run_id, params)
    return page.to_response(lambda step: render_step(step, list(include)))


@router.get("/{thread_id}/runs/{run_id}/steps/{step_id}")
async def get_run_step(
    thread_id: str,
    run_id: str,
    step_id: str,
    session: Session,
    include: IncludeParam = [],  # noqa: B006
) -> dict[str, Any]:
    return render_step(await service.get_step(session, thread_id, run_id, step_id), list(include))
