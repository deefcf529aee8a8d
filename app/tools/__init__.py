"""The built-in tool registry: one strategy class per tool type, behind `BuiltinTool`."""

from __future__ import annotations

from app.retrieval.embeddings import Embedder
from app.retrieval.index import VectorIndex
from app.tools.base import ActiveTool, BuiltinTool, RunContext, ToolResult
from app.tools.file_search import FileSearchTool

__all__ = ["ActiveTool", "BuiltinTool", "RunContext", "ToolResult", "builtin_tools"]


def builtin_tools(index: VectorIndex | None, embedder: Embedder | None) -> dict[str, BuiltinTool]:
    """The tools this process can run, by run tool `type`."""
    tools: dict[str, BuiltinTool] = {}
    if index is not None:
        tools[FileSearchTool.type] = FileSearchTool(index, embedder)
    return tools
