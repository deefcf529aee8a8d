from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, OpenAIObjectMixin, ProjectOwned


class Thread(OpenAIObjectMixin, ProjectOwned, Base):
    __tablename__ = "threads"

    tool_resources: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)


class Message(OpenAIObjectMixin, Base):
    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_thread_seq", "thread_id", "seq"),
        Index("ix_messages_thread_run_seq", "thread_id", "run_id", "seq"),
    )

    # Deleting a thread deletes its messages, as on OpenAI.
    thread_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("threads.id", ondelete="CASCADE"), nullable=False
    )
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    status: Mapped[str] = mapped_column(String(16), default="completed")
    incomplete_details: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    completed_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    incomplete_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Plain columns, not foreign keys: a message outlives its assistant, as on OpenAI.
    assistant_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attachments: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
