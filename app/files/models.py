from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, OpenAIObjectMixin, ProjectOwned


class StoredFile(OpenAIObjectMixin, ProjectOwned, Base):
    """An uploaded file's metadata; its bytes live at `<files dir>/<id>`."""

    __tablename__ = "files"
    __table_args__ = (
        Index("ix_files_project_seq", "project_id", "seq"),
        Index("ix_files_project_purpose_seq", "project_id", "purpose", "seq"),
        Index("ix_files_expires_at", "expires_at"),
    )

    filename: Mapped[str] = mapped_column(String(1024))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    mime_type: Mapped[str | None] = mapped_column(String(256))
    sha256: Mapped[str] = mapped_column(String(64))
    # OpenAI's deprecated `status`: uploads are processed once stored.
    status: Mapped[str] = mapped_column(String(16), default="processed")
    expires_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
