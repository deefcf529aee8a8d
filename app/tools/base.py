"""Built-in tools: what the server runs itself when the model calls them.

The executor knows no tool by name. For each run it asks the registry (`app.tools`) which
built-in tools the run enables; each `BuiltinTool` strategy returns an `ActiveTool` for that
run (or None when it has nothing to offer), which the executor offers to the model, calls,
and asks for annotations on the final answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True)
class RunContext:
    """What a tool may know of the run it serves."""

    run_id: str
    thread_id: str
    project_id: str  # every object the tool reaches must be this project's
    tool: dict[str, Any]  # the run's tool entry, e.g. {"type": "file_search", "file_search": …}
    # tool_resources of the assistant and of the thread, in that order
    resources: list[dict[str, Any]] = field(default_factory=list)
    include: list[str] = field(default_factory=list)


@dataclass
class ToolResult:
    step_call: dict[str, Any]  # the tool call as the run step shows it to clients
    output: str  # what the model reads back
    # The step delta's tool call (no index) sent once the call is done, e.g. code outputs.
    delta: dict[str, Any] | None = None


class ActiveTool(Protocol):
    """One built-in tool, prepared for one run."""

    name: str  # the function name the model calls
    type: str  # the run tool type, e.g. "file_search" (step tool calls carry it)
    definition: dict[str, Any]  # the chat-completions tool offered to the model

    def started(self, call_id: str) -> dict[str, Any]:
        """The step delta's tool call when the model starts calling (no arguments shown)."""

    def arguments_delta(self, call_id: str, arguments: str) -> dict[str, Any] | None:
        """The step delta's tool call (no index) for what the model's arguments so far add,
        or None to show nothing (e.g. code_interpreter streams its input, file_search not)."""

    def replay(self, step_call: dict[str, Any]) -> None:
        """A call this tool made in an earlier turn of the run (e.g. to number citations)."""

    async def call(self, session: AsyncSession, call_id: str, arguments: str) -> ToolResult: ...

    async def finish_message(self, text: str) -> list[dict[str, Any]]:
        """Called once when a message of the run is final, before `annotate`: content parts to
        add after its text (e.g. image_file for charts), and any work `annotate` needs first
        (e.g. creating the files the text links to)."""

    def annotate(self, text: str) -> list[dict[str, Any]]:
        """Annotations (e.g. file citations) for the final text of a message."""


class BuiltinTool(Protocol):
    type: str  # the run tool `type` that enables it

    async def prepare(self, session: AsyncSession, run: RunContext) -> ActiveTool | None: ...
