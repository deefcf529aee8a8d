"""Projects, their API keys, and the shared counters behind rate limits."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType
from app.ids import now

# Objects made before projects existed, and every request while no key exists.
DEFAULT_PROJECT_ID = "proj_default"
DEFAULT_PROJECT_NAME = "default"


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    # Overrides of the server's defaults: {"rate_limits": {...}, "quotas": {...}, "models": [...]}
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class ApiKey(Base):
    """A key is stored as its SHA-256 digest only: the key itself is shown once, at creation.
    (Keys are 256 random bits, so a fast hash is enough: nothing to brute-force.)"""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    redacted: Mapped[str] = mapped_column(String(32))  # "sk-og-…Ab3x", for listings
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    revoked_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class RateLimitWindow(Base):
    """Requests (or tokens) granted to one bucket in one minute, shared by every process."""

    __tablename__ = "rate_limit_windows"

    bucket: Mapped[str] = mapped_column(String(160), primary_key=True)
    window: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # unix minute
    used: Mapped[int] = mapped_column(BigInteger, default=0)
