from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from app.files.models import StoredFile

# What `POST /files` accepts (CreateFileRequest.purpose).
FilePurpose = Literal["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]
PURPOSES: tuple[str, ...] = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")

MIN_EXPIRY_SECONDS = 3600
MAX_EXPIRY_SECONDS = 2_592_000
# OpenAI: "files with purpose=batch expire after 30 days" unless expires_after says otherwise.
BATCH_DEFAULT_EXPIRY_SECONDS = 30 * 24 * 3600


class FileObject(BaseModel):
    """OpenAIFile. `expires_at` is left out when the file never expires (the spec's type
    is a plain integer, so null would not validate)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: str = "processed"

    @classmethod
    def from_row(cls, row: StoredFile) -> FileObject:
        return cls(
            id=row.id,
            bytes=row.bytes,
            created_at=row.created_at,
            expires_at=row.expires_at,
            filename=row.filename,
            purpose=row.purpose,
            status=row.status,
        )

    def render(self) -> dict[str, Any]:
        data = self.model_dump()
        if data["expires_at"] is None:
            del data["expires_at"]
        return data
