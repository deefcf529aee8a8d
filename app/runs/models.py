from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    Select,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    select,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, OpenAIObjectMixin, ProjectOwned, one_of
from app.prepared import Prepared

# A thread has at most one run in these states (enforced by a partial unique index).
ACTIVE_STATUSES = ("queued", "in_progress", "requires_action", "cancelling")
TERMINAL_STATUSES = ("completed", "failed", "cancelled", "expired", "incomplete")
_ACTIVE_SQL = text("status IN ('queued', 'in_progress', 'requires_action', 'cancelling')")


class Run(OpenAIObjectMixin, ProjectOwned, Base):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_thread_seq", "thread_id", "seq"),
        Index("ix_runs_status_seq", "status", "seq"),
        Index("ix_runs_project_status", "project_id", "status"),
        Index(
            "uq_runs_one_active_per_thread",
            "thread_id",
            unique=True,
            sqlite_where=_ACTIVE_SQL,
            postgresql_where=_ACTIVE_SQL,
        ),
    )

    thread_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("threads.id", ondelete="CASCADE"), nullable=False
    )
    assistant_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(24), default="queued")
    required_action: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    last_error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    expires_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancelled_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    failed_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completed_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    incomplete_details: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    model: Mapped[str] = mapped_column(String(256))
    instructions: Mapped[str] = mapped_column(Text, default="")
    tools: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    temperature: Mapped[float | None] = mapped_column(Float, nullable=True)
    top_p: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    truncation_strategy: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    tool_choice: Mapped[Any] = mapped_column(JSONType, nullable=True)
    parallel_tool_calls: Mapped[bool] = mapped_column(Boolean, default=True)
    response_format: Mapped[Any] = mapped_column(JSONType, nullable=True)
    reasoning_effort: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Executor bookkeeping, never shown to clients.
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    include: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    # No event with a higher sequence number has been published: the executor reserves a
    # block ahead of the deltas it publishes before persisting, so a run resumed after a
    # crash numbers its events past anything a client may have seen.
    next_event_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # How often the run's worker died while executing it (resumed each time, up to a limit).
    interruptions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Model turns closed (their messages and steps final); a resumed run redoes the next one.
    turns: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


def active_run_of(thread_id: Any) -> Select[tuple[str]]:
    """The id of the thread's active run (there is at most one), as a query; `thread_id` is
    a value or a bound parameter."""
    return select(Run.id).where(Run.thread_id == thread_id, one_of(Run.status, ACTIVE_STATUSES))


_ACTIVE_RUN = Prepared(active_run_of(bindparam("thread_id")))


def active_run_in(conn: Connection, thread_id: str) -> str | None:
    """`active_run_of`, run inside a caller's transaction: the run's id, or None."""
    return _ACTIVE_RUN.scalar(conn, {"thread_id": thread_id})


class RunStep(OpenAIObjectMixin, Base):
    __tablename__ = "run_steps"
    __table_args__ = (Index("ix_run_steps_run_seq", "run_id", "seq"),)

    run_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
    )
    thread_id: Mapped[str] = mapped_column(String(64))
    assistant_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(24))
    status: Mapped[str] = mapped_column(String(24), default="in_progress")
    step_details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    last_error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    expired_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancelled_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    failed_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completed_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # What the model saw for this step's tool calls (names, arguments, built-in tool output);
    # never shown to clients.
    internal: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class RunEvent(Base):
    """The persisted stream of a run: replayed to late or remote subscribers."""

    __tablename__ = "run_events"
    __table_args__ = (UniqueConstraint("run_id", "seq", name="uq_run_events_run_seq"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    run_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
    )
    seq: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(48))
    data: Mapped[str] = mapped_column(Text)  # JSON, as sent: encoded once
