from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from app.schemas import Metadata, RequestModel, ToolResources
from app.threads.models import Message, Thread

ImageDetail = Literal["auto", "low", "high"]


class TextPart(RequestModel):
    type: Literal["text"]
    text: Annotated[str, Field(min_length=1, max_length=256_000)]


class ImageURL(RequestModel):
    url: Annotated[str, Field(min_length=1, max_length=10_000_000)]  # data URLs are long
    detail: ImageDetail = "auto"


class ImageURLPart(RequestModel):
    type: Literal["image_url"]
    image_url: ImageURL


class ImageFile(RequestModel):
    file_id: str
    detail: ImageDetail = "auto"


class ImageFilePart(RequestModel):
    type: Literal["image_file"]
    image_file: ImageFile


ContentPart = Annotated[TextPart | ImageURLPart | ImageFilePart, Field(discriminator="type")]
MessageContent = (
    Annotated[str, Field(min_length=1, max_length=256_000)]
    | Annotated[list[ContentPart], Field(min_length=1, max_length=100)]
)


class AttachmentTool(RequestModel):
    type: Literal["code_interpreter", "file_search"]


class Attachment(RequestModel):
    file_id: Annotated[str, Field(max_length=64)]
    tools: list[AttachmentTool] = Field(default_factory=list, max_length=2)


class MessageCreate(RequestModel):
    role: Literal["user", "assistant"]
    content: MessageContent
    attachments: Annotated[list[Attachment] | None, Field(max_length=20)] = None
    metadata: Metadata = None


class MessageUpdate(RequestModel):
    metadata: Metadata = None


class ThreadCreate(RequestModel):
    messages: Annotated[list[MessageCreate] | None, Field(max_length=100)] = None
    tool_resources: ToolResources | None = None
    metadata: Metadata = None


class ThreadUpdate(RequestModel):
    tool_resources: ToolResources | None = None
    metadata: Metadata = None


class ThreadObject(BaseModel):
    id: str
    object: Literal["thread"] = "thread"
    created_at: int
    tool_resources: dict[str, Any]
    metadata: dict[str, str]

    @classmethod
    def from_row(cls, row: Thread) -> ThreadObject:
        return cls(
            id=row.id,
            created_at=row.created_at,
            tool_resources=row.tool_resources or {},
            metadata=row.metadata_ or {},
        )


class MessageObject(BaseModel):
    id: str
    object: Literal["thread.message"] = "thread.message"
    created_at: int
    thread_id: str
    status: str
    incomplete_details: dict[str, Any] | None
    completed_at: int | None
    incomplete_at: int | None
    role: str
    content: list[dict[str, Any]]
    assistant_id: str | None
    run_id: str | None
    attachments: list[dict[str, Any]]
    metadata: dict[str, str]

    @classmethod
    def from_row(cls, row: Message) -> MessageObject:
        # Not validated again: the row holds what a validated request or the executor wrote
        # (validating a page of 20 cost a fifth of a list request).
        return cls.model_construct(**cls.dump_row(row))

    @staticmethod
    def dump_row(row: Message) -> dict[str, Any]:
        """`from_row(row).model_dump()` without the model: the JSON-ready object, in the
        schema's field order (lists and events render many, and building models cost more
        than the rest of a list request; tests check the two agree)."""
        return {
            "id": row.id,
            "object": "thread.message",
            "created_at": row.created_at,
            "thread_id": row.thread_id,
            "status": row.status,
            "incomplete_details": row.incomplete_details,
            "completed_at": row.completed_at,
            "incomplete_at": row.incomplete_at,
            "role": row.role,
            "content": row.content,
            "assistant_id": row.assistant_id,
            "run_id": row.run_id,
            "attachments": row.attachments or [],
            "metadata": row.metadata_ or {},
        }


class MessageList(BaseModel):
    """GET /threads/{id}/messages (for the OpenAPI document: the route builds it as a dict)."""

    object: Literal["list"] = "list"
    data: list[MessageObject]
    first_id: str
    last_id: str
    has_more: bool


def content_to_stored(content: str | list[Any]) -> list[dict[str, Any]]:
    """Request content (a string or parts) → OpenAI's stored message content parts."""
    if isinstance(content, str):
        return [{"type": "text", "text": {"value": content, "annotations": []}}]
    stored: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            stored.append({"type": "text", "text": {"value": part.text, "annotations": []}})
        else:
            stored.append(part.model_dump())
    return stored
