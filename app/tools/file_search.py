"""The `file_search` tool: the model searches the run's vector stores and cites what it used.

The model sees a function `file_search(queries)`. Results come back numbered with markers
like 【0:2†report.pdf】; markers the final answer keeps become `file_citation` annotations.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.retrieval.embeddings import Embedder
from app.retrieval.index import VectorIndex
from app.tools.base import RunContext, ToolResult
from app.vector_stores.ingestion import wait_for_ingestion
from app.vector_stores.search import search_stores

TOOL_NAME = "file_search"
DEFAULT_MAX_RESULTS = 20
DEFAULT_RANKER = "default_2024_08_21"
MARKER = re.compile(r"【(\d+):(\d+)†([^】]*)】")
INGESTION_PATIENCE_SECONDS = 60.0  # a search waits this long for files still being ingested

DEFINITION: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": (
            "Search the files the user provided. Use it whenever the answer may be in them. "
            "Cite every passage you use by copying its marker, e.g. 【0:1†notes.md】, right "
            "after the sentence it supports."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "queries": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "One to five search queries, each a full question or phrase.",
                }
            },
            "required": ["queries"],
        },
    },
}


@dataclass
class FileSearchSettings:
    project_id: str
    vector_store_ids: list[str]
    max_num_results: int = DEFAULT_MAX_RESULTS
    score_threshold: float = 0.0
    ranker: str = DEFAULT_RANKER

    @classmethod
    def from_tool(
        cls, tool: dict[str, Any], project_id: str, vector_store_ids: list[str]
    ) -> FileSearchSettings:
        options = tool.get("file_search") or {}
        ranking = options.get("ranking_options") or {}
        ranker = ranking.get("ranker") or "auto"
        return cls(
            project_id=project_id,
            vector_store_ids=vector_store_ids,
            max_num_results=options.get("max_num_results") or DEFAULT_MAX_RESULTS,
            score_threshold=float(ranking.get("score_threshold") or 0.0),
            ranker=DEFAULT_RANKER if ranker == "auto" else ranker,
        )


@dataclass
class FileSearchOutcome:
    step_call: dict[str, Any]  # the run step's `file_search` tool call
    output: str  # what the model reads


def _queries(arguments: str) -> list[str]:
    try:
        parsed = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return [arguments] if arguments.strip() else []
    queries = parsed.get("queries") if isinstance(parsed, dict) else None
    if isinstance(queries, str):
        queries = [queries]
    if not queries and isinstance(parsed, dict) and isinstance(parsed.get("query"), str):
        queries = [parsed["query"]]
    return [q for q in (queries or []) if isinstance(q, str) and q.strip()][:5]


async def run_file_search(
    session: AsyncSession,
    index: VectorIndex,
    embedder: Embedder | None,
    settings: FileSearchSettings,
    call_id: str,
    arguments: str,
    search_number: int,
) -> FileSearchOutcome:
    """Search for every query (hits merged best-first) and number the hits for citation.

    The search marks the stores active; that is committed with the step."""
    hits = await search_stores(
        session,
        index,
        embedder,
        settings.project_id,
        settings.vector_store_ids,
        _queries(arguments),
        max_num_results=settings.max_num_results,
        score_threshold=settings.score_threshold,
    )
    results = [
        {
            "file_id": h.file_id,
            "file_name": h.filename,
            "score": round(h.score, 6),
            "content": [{"type": "text", "text": h.text}],
        }
        for h in hits
    ]
    if hits:
        blocks = [f"【{search_number}:{i}†{h.filename}】\n{h.text}" for i, h in enumerate(hits)]
        output = "Search results (cite with the markers):\n\n" + "\n\n".join(blocks)
    else:
        output = "No results were found in the provided files."
    return FileSearchOutcome(
        step_call={
            "id": call_id,
            "type": "file_search",
            "file_search": {
                "ranking_options": {
                    "ranker": settings.ranker,
                    "score_threshold": settings.score_threshold,
                },
                "results": results,
            },
        },
        output=output,
    )


def citations(text: str, searches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """`file_citation` annotations for the markers in `text` that name a real result.

    `searches` holds each file_search call's results in run order (the marker's first number).
    """
    annotations = []
    for match in MARKER.finditer(text):
        search, item = int(match.group(1)), int(match.group(2))
        if search < len(searches) and item < len(searches[search]):
            annotations.append(
                {
                    "type": "file_citation",
                    "text": match.group(0),
                    "start_index": match.start(),
                    "end_index": match.end(),
                    "file_citation": {"file_id": searches[search][item]["file_id"]},
                }
            )
    return annotations


class FileSearchTool:
    """The `file_search` strategy: searches the vector stores of the run's assistant and thread."""

    type = TOOL_NAME

    def __init__(
        self,
        index: VectorIndex,
        embedder: Embedder | None,
        ingestion_patience: float = INGESTION_PATIENCE_SECONDS,
    ) -> None:
        self.index = index
        self.embedder = embedder
        self.ingestion_patience = ingestion_patience

    async def prepare(self, session: AsyncSession, run: RunContext) -> ActiveFileSearch:
        store_ids: list[str] = []
        for resources in run.resources:
            for store_id in (resources.get("file_search") or {}).get("vector_store_ids", []):
                if store_id not in store_ids:
                    store_ids.append(store_id)
        # Files attached moments ago may still be in ingestion; a search should see them.
        await wait_for_ingestion(session, store_ids, patience=self.ingestion_patience)
        settings = FileSearchSettings.from_tool(run.tool, run.project_id, store_ids)
        return ActiveFileSearch(self, settings)


class ActiveFileSearch:
    name = TOOL_NAME
    type = TOOL_NAME
    definition = DEFINITION

    def __init__(self, tool: FileSearchTool, settings: FileSearchSettings) -> None:
        self.tool = tool
        self.settings = settings
        self.searches: list[list[dict[str, Any]]] = []  # each call's results, in run order

    def started(self, call_id: str) -> dict[str, Any]:
        # The client sees a file_search call, never the model's query text.
        return {"id": call_id, "type": "file_search", "file_search": {}}

    def arguments_delta(self, call_id: str, arguments: str) -> dict[str, Any] | None:
        return None

    def replay(self, step_call: dict[str, Any]) -> None:
        self.searches.append(step_call["file_search"].get("results", []))

    async def call(self, session: AsyncSession, call_id: str, arguments: str) -> ToolResult:
        outcome = await run_file_search(
            session,
            self.tool.index,
            self.tool.embedder,
            self.settings,
            call_id,
            arguments,
            search_number=len(self.searches),
        )
        self.replay(outcome.step_call)
        return ToolResult(outcome.step_call, outcome.output)

    async def finish_message(self, text: str) -> list[dict[str, Any]]:
        return []

    def annotate(self, text: str) -> list[dict[str, Any]]:
        return citations(text, self.searches) if self.searches else []
