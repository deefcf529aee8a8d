from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, OpenAIObjectMixin, ProjectOwned
from app.ids import next_seq, now


class VectorStore(OpenAIObjectMixin, ProjectOwned, Base):
    """A vector store. `status` and `file_counts` are derived from its files when read."""

    __tablename__ = "vector_stores"
    __table_args__ = (
        Index("ix_vector_stores_project_seq", "project_id", "seq"),
        Index("ix_vector_stores_expires_at", "expired", "expires_at"),
        Index("ix_vector_stores_thread", "thread_id"),
    )

    name: Mapped[str | None] = mapped_column(String(256))
    expires_after: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    expires_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_active_at: Mapped[int] = mapped_column(Integer, default=now)
    # Set by the expiry cleanup (or noticed on read once expires_at has passed).
    expired: Mapped[bool] = mapped_column(Boolean, default=False)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    # The thread whose message attachments made this store (it goes with the thread).
    thread_id: Mapped[str | None] = mapped_column(String(64), nullable=True)

    def has_expired(self) -> bool:
        """Marked expired, or past `expires_at` (before the periodic cleanup marks it)."""
        return self.expired or (self.expires_at is not None and self.expires_at <= now())


class VectorStoreFileBatch(OpenAIObjectMixin, Base):
    """A file batch. Its `file_counts` (and so `completed`) come from its files."""

    __tablename__ = "vector_store_file_batches"
    __table_args__ = (Index("ix_vector_store_file_batches_store", "vector_store_id"),)

    vector_store_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("vector_stores.id", ondelete="CASCADE"), nullable=False
    )
    # "in_progress" until cancelled; completed/failed are derived from the files.
    status: Mapped[str] = mapped_column(String(16), default="in_progress")


class VectorStoreFile(Base):
    """A file attached to a vector store. Its API id is the file's id (`id`), unique per
    store; `key` is the row's own primary key (the same file can be in many stores)."""

    __tablename__ = "vector_store_files"
    __table_args__ = (
        UniqueConstraint("vector_store_id", "id", name="uq_vector_store_files_store_file"),
        Index("ix_vector_store_files_store_seq", "vector_store_id", "seq"),
        Index("ix_vector_store_files_store_status_seq", "vector_store_id", "status", "seq"),
        Index("ix_vector_store_files_batch_status_seq", "batch_id", "status", "seq"),
        Index("ix_vector_store_files_file", "id"),
        Index("ix_vector_store_files_claim", "status", "lease_expires_at"),
    )

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(
        String(64), ForeignKey("files.id", ondelete="CASCADE"), nullable=False
    )
    vector_store_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("vector_stores.id", ondelete="CASCADE"), nullable=False
    )
    batch_id: Mapped[str | None] = mapped_column(
        String(64),
        ForeignKey("vector_store_file_batches.id", ondelete="SET NULL"),
        nullable=True,
    )
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    seq: Mapped[int] = mapped_column(BigInteger, default=next_seq)
    status: Mapped[str] = mapped_column(String(16), default="in_progress")
    last_error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    usage_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    chunking_strategy: Mapped[dict[str, Any]] = mapped_column(JSONType)
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # Ingestion bookkeeping: a fresh token per (re)attach, so stale work is recognised;
    # a lease so exactly one worker processes the file and a dead worker's file is retried.
    ingest_token: Mapped[str] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
