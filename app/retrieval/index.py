"""The vector index as the rest of the app sees it: one interface, opened on first use.

`VectorIndex` is what services, tools and ingestion call; `QdrantIndex`
(`app.retrieval.qdrant_index`, the only qdrant-client import) is the backend. Importing
qdrant-client and opening a local collection take seconds, so `LazyIndex` defers both to
a worker thread on first use (or to `open_in_background()` right after start): the server
answers at once, and the first request that needs the index waits for it instead of failing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from app.errors import APIError
from app.retrieval.filters import AttributeValue

if TYPE_CHECKING:
    from app.retrieval.chunking import Chunk

MAX_NUM_RESULTS = 50


@dataclass(frozen=True, slots=True)
class SearchHit:
    vector_store_id: str
    file_id: str
    filename: str
    score: float
    text: str
    chunk_index: int
    attributes: dict[str, AttributeValue] = field(default_factory=dict)


class VectorIndex(Protocol):
    dense_dim: int | None

    async def ensure_collection(self) -> None:
        """Create the collection if missing; raise if it does not match the configuration."""

    async def upsert_chunks(
        self,
        vector_store_id: str,
        file_id: str,
        filename: str,
        chunks: Sequence[Chunk],
        attributes: Mapping[str, AttributeValue] | None = None,
        dense_vectors: Sequence[Sequence[float]] | None = None,
    ) -> int: ...

    async def update_attributes(
        self, vector_store_id: str, file_id: str, attributes: Mapping[str, AttributeValue]
    ) -> None: ...

    async def delete_file(self, vector_store_id: str | None, file_id: str) -> None: ...

    async def delete_store(self, vector_store_id: str) -> None: ...

    async def count_chunks(self, vector_store_id: str, file_id: str | None = None) -> int: ...

    async def search(
        self,
        vector_store_ids: Sequence[str],
        query: str,
        dense_query: Sequence[float] | None = None,
        max_num_results: int = 10,
        score_threshold: float = 0.0,
        filters: Mapping[str, Any] | None = None,
    ) -> list[SearchHit]: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class IndexUnavailable(APIError):
    def __init__(self, reason: str) -> None:
        super().__init__(503, reason, type="server_error")


class LazyIndex:
    """A `VectorIndex` whose backend is built (in a thread) when first needed."""

    def __init__(self, build: Callable[[], VectorIndex], dense_dim: int | None) -> None:
        self.dense_dim = dense_dim
        self._build = build
        self._backend: VectorIndex | None = None
        self._opening: asyncio.Task[VectorIndex] | None = None
        self.elsewhere: str | None = None  # why this process must not open it

    def serve_elsewhere(self, reason: str) -> None:
        """Another process owns the index (the embedded engine allows one): refuse, clearly."""
        self.elsewhere = reason

    @property
    def is_open(self) -> bool:
        return self._backend is not None

    def opening_error(self) -> str | None:
        """Why the backend failed to open, if it did (it is retried on next use)."""
        task = self._opening
        if task is None or not task.done() or task.cancelled() or task.exception() is None:
            return None
        return f"{task.exception().__class__.__name__}: {task.exception()}"

    def open_in_background(self) -> None:
        if self._opening is None:
            self._opening = asyncio.create_task(self._open(), name="open-vector-index")

    async def _open(self) -> VectorIndex:
        backend = await asyncio.to_thread(self._build)
        await backend.ensure_collection()  # fails fast on a collection of another shape
        self._backend = backend
        return backend

    async def ensure_collection(self) -> None:
        await self.backend()

    async def backend(self) -> VectorIndex:
        if self._backend is not None:
            return self._backend
        if self.elsewhere is not None:
            raise IndexUnavailable(self.elsewhere)
        if self.opening_error() is not None:
            self._opening = None  # a failed open (server down, say) is tried again
        self.open_in_background()
        assert self._opening is not None
        # shield: one caller giving up (a cancelled request) must not cancel the opening.
        return await asyncio.shield(self._opening)

    async def upsert_chunks(
        self,
        vector_store_id: str,
        file_id: str,
        filename: str,
        chunks: Sequence[Chunk],
        attributes: Mapping[str, AttributeValue] | None = None,
        dense_vectors: Sequence[Sequence[float]] | None = None,
    ) -> int:
        backend = await self.backend()
        return await backend.upsert_chunks(
            vector_store_id, file_id, filename, chunks, attributes, dense_vectors
        )

    async def update_attributes(
        self, vector_store_id: str, file_id: str, attributes: Mapping[str, AttributeValue]
    ) -> None:
        await (await self.backend()).update_attributes(vector_store_id, file_id, attributes)

    async def delete_file(self, vector_store_id: str | None, file_id: str) -> None:
        await (await self.backend()).delete_file(vector_store_id, file_id)

    async def delete_store(self, vector_store_id: str) -> None:
        await (await self.backend()).delete_store(vector_store_id)

    async def count_chunks(self, vector_store_id: str, file_id: str | None = None) -> int:
        return await (await self.backend()).count_chunks(vector_store_id, file_id)

    async def search(
        self,
        vector_store_ids: Sequence[str],
        query: str,
        dense_query: Sequence[float] | None = None,
        max_num_results: int = 10,
        score_threshold: float = 0.0,
        filters: Mapping[str, Any] | None = None,
    ) -> list[SearchHit]:
        backend = await self.backend()
        return await backend.search(
            vector_store_ids, query, dense_query, max_num_results, score_threshold, filters
        )

    async def ping(self) -> None:
        await (await self.backend()).ping()

    async def close(self) -> None:
        if self._opening is not None and self._backend is None:
            try:
                await self._opening
            except Exception:
                return
        if self._backend is not None:
            await self._backend.close()


def create_index(settings: Any) -> LazyIndex:
    """The process-wide index: a Qdrant server at QDRANT_URL, else local under the data dir.

    With an embedding model configured, points also get a dense vector of
    `embedding_dimensions` (required then: the collection's vector size is fixed).
    """
    dense_dim: int | None = None
    if settings.embedding_model:
        dense_dim = settings.embedding_dimensions
        if not dense_dim:
            raise ValueError(
                "An embedding model is configured but its dimensions are not: set "
                "OPENGROVE_EMBEDDING_DIMENSIONS to the model's output size."
            )

    def build() -> VectorIndex:
        from app.retrieval.qdrant_index import QdrantIndex

        if settings.qdrant_url:
            return QdrantIndex(
                url=settings.qdrant_url, api_key=settings.qdrant_api_key, dense_dim=dense_dim
            )
        return QdrantIndex(path=settings.qdrant_path, dense_dim=dense_dim)

    return LazyIndex(build, dense_dim)
