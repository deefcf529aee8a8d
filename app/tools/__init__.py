"""The built-in tool registry: one strategy class per tool type, behind `BuiltinTool`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.assistants.models import Assistant
from app.db import Database
from app.retrieval.embeddings import Embedder
from app.retrieval.index import VectorIndex
from app.sandbox import KernelPool
from app.threads.models import Thread
from app.tools.base import ActiveTool, BuiltinTool, RunContext, ToolResult
from app.tools.code_interpreter import CodeInterpreterTool
from app.tools.file_search import FileSearchTool

__all__ = ["ActiveTool", "BuiltinTool", "RunContext", "ToolResult", "activate", "builtin_tools"]


def builtin_tools(
    index: VectorIndex | None,
    embedder: Embedder | None,
    sandbox: KernelPool | None = None,
    db: Database | None = None,
    files_dir: Path | None = None,
) -> dict[str, BuiltinTool]:
    """The tools this process can run, by run tool `type`."""
    tools: dict[str, BuiltinTool] = {}
    if index is not None:
        tools[FileSearchTool.type] = FileSearchTool(index, embedder)
    if sandbox is not None and db is not None and files_dir is not None:
        # Offered per run only once the sandbox proved it works (see CodeInterpreterTool).
        tools[CodeInterpreterTool.type] = CodeInterpreterTool(sandbox, db, files_dir)
    return tools


async def activate(
    registry: dict[str, BuiltinTool],
    session: AsyncSession,
    run: Any,
    earlier_calls: Iterable[dict[str, Any]] = (),
) -> dict[str, ActiveTool]:
    """The built-in tools `run` enables, ready for its next turn, by the function name the
    model calls; `earlier_calls`: the tool calls of the run's closed turns, in order."""
    enabled = [t for t in run.tools or [] if t.get("type") in registry]
    if not enabled:
        return {}
    thread = await session.get(Thread, run.thread_id)
    assistant = await session.get(Assistant, run.assistant_id)
    resources = [owner.tool_resources or {} for owner in (assistant, thread) if owner is not None]
    active: dict[str, ActiveTool] = {}
    by_type: dict[str, ActiveTool] = {}
    for entry in enabled:
        context = RunContext(
            run.id, run.thread_id, run.project_id, entry, resources, run.include or []
        )
        tool = await registry[entry["type"]].prepare(session, context)
        if tool is not None:
            active[tool.name] = tool
            by_type[tool.type] = tool
    for call in earlier_calls:
        earlier = by_type.get(call.get("type", ""))  # a built-in call is typed by its tool
        if earlier is not None:
            earlier.replay(call)
    return active
