from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from app.assistants.models import Assistant
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

Name = Annotated[str | None, Field(max_length=256)]
Description = Annotated[str | None, Field(max_length=512)]
Instructions = Annotated[str | None, Field(max_length=256_000)]


class AssistantCreate(RequestModel):
    model: str
    name: Name = None
    description: Description = None
    instructions: Instructions = None
    reasoning_effort: ReasoningEffort = None
    tools: ToolList = Field(default_factory=list)
    tool_resources: ToolResources | None = None
    metadata: Metadata = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    response_format: ResponseFormat | None = "auto"


class AssistantUpdate(RequestModel):
    """Only the fields the client sent are changed (`model_fields_set`)."""

    model: str | None = None
    name: Name = None
    description: Description = None
    instructions: Instructions = None
    reasoning_effort: ReasoningEffort = None
    tools: ToolList | None = None
    tool_resources: ToolResources | None = None
    metadata: Metadata = None
    temperature: Temperature = None
    top_p: TopP = None
    response_format: ResponseFormat | None = None


class AssistantObject(BaseModel):
    id: str
    object: Literal["assistant"] = "assistant"
    created_at: int
    name: str | None
    description: str | None
    model: str
    instructions: str | None
    tools: list[dict[str, Any]]
    tool_resources: dict[str, Any]
    metadata: dict[str, str]
    temperature: float | None
    top_p: float | None
    response_format: Any
    reasoning_effort: str | None = None

    @classmethod
    def from_row(cls, row: Assistant) -> AssistantObject:
        return cls(
            id=row.id,
            created_at=row.created_at,
            name=row.name,
            description=row.description,
            model=row.model,
            instructions=row.instructions,
            tools=row.tools,
            tool_resources=row.tool_resources or {},
            metadata=row.metadata_ or {},
            temperature=row.temperature,
            top_p=row.top_p,
            response_format=row.response_format if row.response_format is not None else "auto",
            reasoning_effort=row.reasoning_effort,
        )
