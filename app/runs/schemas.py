from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from app.runs.models import Run, RunStep
from app.schemas import (
    Metadata,
    ReasoningEffort,
    RequestModel,
    ResponseFormat,
    Temperature,
    ToolList,
    ToolResources,
    TopP,
)
from app.threads.schemas import MessageCreate, ThreadCreate

FILE_SEARCH_CONTENT = "step_details.tool_calls[*].file_search.results[*].content"
Include = list[Literal["step_details.tool_calls[*].file_search.results[*].content"]]


class TruncationStrategy(RequestModel):
    type: Literal["auto", "last_messages"]
    last_messages: Annotated[int | None, Field(ge=1)] = None


class NamedFunction(RequestModel):
    name: str


class FunctionToolChoice(RequestModel):
    type: Literal["function"]
    function: NamedFunction


class BuiltinToolChoice(RequestModel):
    type: Literal["file_search", "code_interpreter"]


ToolChoice = (
    Literal["none", "auto", "required"]
    | Annotated[FunctionToolChoice | BuiltinToolChoice, Field(discriminator="type")]
)
TokenLimit = Annotated[int | None, Field(ge=256)]


class _RunOptions(RequestModel):
    """Overrides shared by createRun and createThreadAndRun."""

    assistant_id: str
    model: str | None = None
    instructions: Annotated[str | None, Field(max_length=256_000)] = None
    tools: ToolList | None = None
    metadata: Metadata = None
    temperature: Temperature = None
    top_p: TopP = None
    stream: bool | None = None
    max_prompt_tokens: TokenLimit = None
    max_completion_tokens: TokenLimit = None
    truncation_strategy: TruncationStrategy | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    reasoning_effort: ReasoningEffort = None


class RunCreate(_RunOptions):
    additional_instructions: Annotated[str | None, Field(max_length=256_000)] = None
    additional_messages: Annotated[list[MessageCreate] | None, Field(max_length=100)] = None


class ThreadAndRunCreate(_RunOptions):
    thread: ThreadCreate | None = None
    tool_resources: ToolResources | None = None


class RunUpdate(RequestModel):
    metadata: Metadata = None


class ToolOutput(RequestModel):
    tool_call_id: Annotated[str | None, Field(max_length=256)] = None
    output: Annotated[str | None, Field(max_length=1_000_000)] = None


class SubmitToolOutputs(RequestModel):
    tool_outputs: Annotated[list[ToolOutput], Field(max_length=128)]
    stream: bool | None = None


class RunObject(BaseModel):
    id: str
    object: Literal["thread.run"] = "thread.run"
    created_at: int
    thread_id: str
    assistant_id: str
    status: str
    required_action: dict[str, Any] | None
    last_error: dict[str, Any] | None
    expires_at: int | None
    started_at: int | None
    cancelled_at: int | None
    failed_at: int | None
    completed_at: int | None
    incomplete_details: dict[str, Any] | None
    model: str
    instructions: str
    tools: list[dict[str, Any]]
    metadata: dict[str, str]
    usage: dict[str, Any] | None
    temperature: float | None
    top_p: float | None
    max_prompt_tokens: int | None
    max_completion_tokens: int | None
    truncation_strategy: dict[str, Any]
    tool_choice: Any
    parallel_tool_calls: bool
    response_format: Any
    reasoning_effort: str | None = None


def render_run(row: Run) -> dict[str, Any]:
    """The RunObject as JSON; a plain dict because the executor renders it per event."""
    return {
        "id": row.id,
        "object": "thread.run",
        "created_at": row.created_at,
        "thread_id": row.thread_id,
        "assistant_id": row.assistant_id,
        "status": row.status,
        "required_action": row.required_action,
        "last_error": row.last_error,
        "expires_at": row.expires_at,
        "started_at": row.started_at,
        "cancelled_at": row.cancelled_at,
        "failed_at": row.failed_at,
        "completed_at": row.completed_at,
        "incomplete_details": row.incomplete_details,
        "model": row.model,
        "instructions": row.instructions or "",
        "tools": row.tools or [],
        "metadata": row.metadata_ or {},
        "usage": row.usage,
        "temperature": row.temperature,
        "top_p": row.top_p,
        "max_prompt_tokens": row.max_prompt_tokens,
        "max_completion_tokens": row.max_completion_tokens,
        "truncation_strategy": row.truncation_strategy or {"type": "auto", "last_messages": None},
        "tool_choice": row.tool_choice if row.tool_choice is not None else "auto",
        "parallel_tool_calls": row.parallel_tool_calls,
        "response_format": row.response_format if row.response_format is not None else "auto",
        "reasoning_effort": row.reasoning_effort,
    }


def render_step(row: RunStep, include: list[str] | None = None) -> dict[str, Any]:
    details = row.step_details
    if details.get("type") == "tool_calls" and FILE_SEARCH_CONTENT not in (include or []):
        details = _without_file_search_content(details)
    return {
        "id": row.id,
        "object": "thread.run.step",
        "created_at": row.created_at,
        "assistant_id": row.assistant_id,
        "thread_id": row.thread_id,
        "run_id": row.run_id,
        "type": row.type,
        "status": row.status,
        "step_details": details,
        "last_error": row.last_error,
        "expired_at": row.expired_at,
        "cancelled_at": row.cancelled_at,
        "failed_at": row.failed_at,
        "completed_at": row.completed_at,
        "metadata": row.metadata_ or {},
        "usage": row.usage,
    }


def _without_file_search_content(details: dict[str, Any]) -> dict[str, Any]:
    """File-search result `content` is shown only when `include[]` asks for it."""
    calls = []
    for call in details.get("tool_calls", []):
        if call.get("type") == "file_search" and call.get("file_search", {}).get("results"):
            results = [
                {k: v for k, v in result.items() if k != "content"}
                for result in call["file_search"]["results"]
            ]
            call = {**call, "file_search": {**call["file_search"], "results": results}}
        calls.append(call)
    return {**details, "tool_calls": calls}
