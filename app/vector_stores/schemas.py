from __future__ import annotations

import math
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import AfterValidator, BaseModel, Field, model_validator

from app.retrieval.chunking import (
    DEFAULT_CHUNK_OVERLAP_TOKENS,
    DEFAULT_MAX_CHUNK_SIZE_TOKENS,
)
from app.retrieval.filters import build_filter
from app.retrieval.index import SearchHit
from app.schemas import (
    ChunkingStrategy,
    Metadata,
    RequestModel,
    StaticChunkingStrategy,
    check_key_value_object,
)
from app.vector_stores.models import VectorStore, VectorStoreFile, VectorStoreFileBatch

FileStatus = Literal["in_progress", "completed", "failed", "cancelled"]
STATUSES: tuple[str, ...] = ("in_progress", "completed", "failed", "cancelled")


def _check_attribute(key: str, item: Any) -> None:
    if isinstance(item, str):
        if len(item) > 512:
            raise ValueError(
                f"Invalid 'attributes.{key}': string too long. Expected a string with "
                f"maximum length 512, but got a string with length {len(item)} instead."
            )
    elif not (isinstance(item, bool) or (isinstance(item, int | float) and math.isfinite(item))):
        raise ValueError(
            f"Invalid type for 'attributes.{key}': expected a string, number or boolean."
        )


def _check_attributes(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None:
        check_key_value_object("attributes", value, _check_attribute)
    return value


Attributes = Annotated[dict[str, Any] | None, AfterValidator(_check_attributes)]


def _check_filters(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None:
        build_filter(value)  # raises ValueError with a client-facing message
    return value


Filters = Annotated[dict[str, Any] | None, AfterValidator(_check_filters)]


class ExpiresAfter(RequestModel):
    anchor: Literal["last_active_at"]
    days: int = Field(ge=1, le=365)


class VectorStoreCreate(RequestModel):
    file_ids: list[str] = Field(default_factory=list, max_length=500)
    name: Annotated[str | None, Field(max_length=256)] = None
    expires_after: ExpiresAfter | None = None
    chunking_strategy: ChunkingStrategy | None = None
    metadata: Metadata = None


class VectorStoreUpdate(RequestModel):
    """Only the fields the client sent are changed (`model_fields_set`)."""

    name: Annotated[str | None, Field(max_length=256)] = None
    expires_after: ExpiresAfter | None = None
    metadata: Metadata = None


class VectorStoreFileCreate(RequestModel):
    file_id: str
    chunking_strategy: ChunkingStrategy | None = None
    attributes: Attributes = None


class VectorStoreFileUpdate(RequestModel):
    attributes: Attributes


class FileBatchCreate(RequestModel):
    file_ids: Annotated[list[str] | None, Field(min_length=1, max_length=2000)] = None
    files: Annotated[list[VectorStoreFileCreate] | None, Field(min_length=1, max_length=2000)] = (
        None
    )
    chunking_strategy: ChunkingStrategy | None = None
    attributes: Attributes = None

    @model_validator(mode="after")
    def _one_of(self) -> FileBatchCreate:
        if self.file_ids is None and self.files is None:
            raise ValueError("Missing required parameter: one of 'file_ids' or 'files'.")
        if self.file_ids is not None and self.files is not None:
            raise ValueError("Invalid request: 'file_ids' and 'files' are mutually exclusive.")
        return self


class RankingOptions(RequestModel):
    ranker: Literal["none", "auto", "default-2024-11-15"] = "auto"
    score_threshold: float = Field(default=0.0, ge=0, le=1)


SearchText = Annotated[str, Field(min_length=1, max_length=4096)]
Query = SearchText | Annotated[list[SearchText], Field(min_length=1, max_length=16)]


class SearchRequest(RequestModel):
    query: Query
    rewrite_query: bool = False
    max_num_results: int = Field(default=10, ge=1, le=50)
    filters: Filters = None
    ranking_options: RankingOptions | None = None


# -- responses ---------------------------------------------------------------------------


def stored_chunking(strategy: Any) -> dict[str, Any]:
    """A request `chunking_strategy` as the static form stored and returned (auto = 800/400)."""
    if isinstance(strategy, StaticChunkingStrategy):
        return {"type": "static", "static": strategy.static.model_dump()}
    return {
        "type": "static",
        "static": {
            "max_chunk_size_tokens": DEFAULT_MAX_CHUNK_SIZE_TOKENS,
            "chunk_overlap_tokens": DEFAULT_CHUNK_OVERLAP_TOKENS,
        },
    }


def empty_counts() -> dict[str, int]:
    return {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0, "total": 0}


class StoreCounts(NamedTuple):
    """What a store's object derives from its files: counts by status, and usage bytes."""

    files: dict[str, int]
    usage_bytes: int


class FileCounts(BaseModel):
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    total: int = 0


class VectorStoreObject(BaseModel):
    id: str
    object: Literal["vector_store"] = "vector_store"
    created_at: int
    name: str
    usage_bytes: int
    file_counts: FileCounts
    status: Literal["expired", "in_progress", "completed"]
    expires_after: dict[str, Any] | None = None
    expires_at: int | None
    last_active_at: int | None
    metadata: dict[str, str]

    @classmethod
    def from_row(cls, row: VectorStore, counts: StoreCounts) -> VectorStoreObject:
        """`counts` from `service.store_counts` / `service.count_store`."""
        if row.has_expired():
            status: Literal["expired", "in_progress", "completed"] = "expired"
        else:
            status = "in_progress" if counts.files.get("in_progress") else "completed"
        return cls(
            id=row.id,
            created_at=row.created_at,
            name=row.name or "",
            usage_bytes=counts.usage_bytes,
            file_counts=FileCounts(**counts.files),
            status=status,
            expires_after=row.expires_after,
            expires_at=row.expires_at,
            last_active_at=row.last_active_at,
            metadata=row.metadata_ or {},
        )

    def render(self) -> dict[str, Any]:
        data = self.model_dump()
        if data["expires_after"] is None:  # the spec's type is an object, never null
            del data["expires_after"]
        return data


class VectorStoreFileObject(BaseModel):
    id: str
    object: Literal["vector_store.file"] = "vector_store.file"
    usage_bytes: int
    created_at: int
    vector_store_id: str
    status: FileStatus
    last_error: dict[str, Any] | None
    chunking_strategy: dict[str, Any]
    attributes: dict[str, Any]

    @classmethod
    def from_row(cls, row: VectorStoreFile) -> VectorStoreFileObject:
        return cls(
            id=row.id,
            usage_bytes=row.usage_bytes,
            created_at=row.created_at,
            vector_store_id=row.vector_store_id,
            status=row.status,  # type: ignore[arg-type]
            last_error=row.last_error,
            chunking_strategy=row.chunking_strategy,
            attributes=row.attributes or {},
        )

    def render(self) -> dict[str, Any]:
        return self.model_dump()


class FileBatchObject(BaseModel):
    id: str
    object: Literal["vector_store.files_batch"] = "vector_store.files_batch"
    created_at: int
    vector_store_id: str
    status: FileStatus
    file_counts: FileCounts

    @classmethod
    def from_row(cls, row: VectorStoreFileBatch, counts: dict[str, int]) -> FileBatchObject:
        if row.status == "cancelled":
            status: FileStatus = "cancelled"
        elif counts.get("in_progress"):
            status = "in_progress"
        elif counts.get("total") and counts.get("failed") == counts.get("total"):
            status = "failed"
        else:
            status = "completed"
        return cls(
            id=row.id,
            created_at=row.created_at,
            vector_store_id=row.vector_store_id,
            status=status,
            file_counts=FileCounts(**counts),
        )

    def render(self) -> dict[str, Any]:
        return self.model_dump()


class SearchResultObject(BaseModel):
    """One `vector_store.search_results.page` item."""

    file_id: str
    filename: str
    score: float
    attributes: dict[str, Any]
    content: list[dict[str, str]]

    @classmethod
    def from_hit(cls, hit: SearchHit) -> SearchResultObject:
        return cls(
            file_id=hit.file_id,
            filename=hit.filename,
            score=hit.score,
            attributes=dict(hit.attributes),
            content=[{"type": "text", "text": hit.text}],
        )


class SearchResultsPage(BaseModel):
    object: Literal["vector_store.search_results.page"] = "vector_store.search_results.page"
    search_query: list[str]
    data: list[SearchResultObject]
    has_more: bool = False
    next_page: None = None

    @classmethod
    def from_hits(cls, queries: list[str], hits: list[SearchHit]) -> SearchResultsPage:
        return cls(search_query=queries, data=[SearchResultObject.from_hit(h) for h in hits])


class FileContentPage(BaseModel):
    """`vector_store.file_content.page`: a file's parsed text (no part when it has none)."""

    object: Literal["vector_store.file_content.page"] = "vector_store.file_content.page"
    data: list[dict[str, str]]
    has_more: bool = False
    next_page: None = None

    @classmethod
    def from_text(cls, text: str) -> FileContentPage:
        return cls(data=[{"type": "text", "text": text}] if text else [])
