"""The Qdrant-server backend of the vector index (the only module importing qdrant-client).

Used when QDRANT_URL is set (several processes or machines share one Qdrant server). It
stores exactly the points `EdgeIndex` stores (same ids, payload, the in-process BM25
sparse vectors of `app.retrieval.lexical`, the optional dense vector) in one collection,
separated by the payload field `vector_store_id` (a tenant keyword index; Qdrant's
recommended multitenancy layout), and shares `search` with it (`PlannedSearch`: the same
plan's queries, here one `query_batch_points` round trip, fused and scored in
`app.retrieval.index`). So the two backends rank alike; `tests/test_retrieval.py` runs the
same cases on both.

`path=` opens qdrant-client's local mode instead of a server: a brute-force engine in
Python, kept only so tests can exercise this module's request shapes without a server (it
is not the embedded default any more; that is Qdrant Edge). Local mode ignores payload
indexes (skipped there), keeps deleted points' terms in its IDF counts (qdrant-client issue
#1426: sparse vectors are blanked before deletes), and holds a file lock per path (clients
are shared per process through a reference-counted registry).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qdrant_client import AsyncQdrantClient, models

from app.retrieval import lexical
from app.retrieval.chunking import Chunk
from app.retrieval.filters import AttributeValue, QdrantFilter
from app.retrieval.index import (
    DENSE_VECTOR,
    LEXICAL_VECTOR,
    EngineQuery,
    PlannedSearch,
    ScoredChunk,
    attribute_payload,
    check_dense,
    chunk_payload,
    point_id,
    scope_filter,
)

DEFAULT_COLLECTION = "opengrove_chunks"
_UPSERT_BATCH = 256
_FACET_LIMIT = 1_000_000


class _LocalClients:
    """One AsyncQdrantClient per local path per process (local mode locks its folder)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, tuple[AsyncQdrantClient, int]] = {}

    def acquire(self, path: Path) -> AsyncQdrantClient:
        key = str(path.resolve())
        with self._lock:
            client, refs = self._clients.get(key) or (None, 0)
            if client is None:
                Path(key).mkdir(parents=True, exist_ok=True)
                client = AsyncQdrantClient(path=key)
            self._clients[key] = (client, refs + 1)
            return client

    def release(self, client: AsyncQdrantClient) -> bool:
        """Drop a reference; True when the caller held the last one and should close."""
        with self._lock:
            for key, (held, refs) in self._clients.items():
                if held is client:
                    if refs > 1:
                        self._clients[key] = (held, refs - 1)
                        return False
                    del self._clients[key]
                    return True
        return True


_local_clients = _LocalClients()


def _sparse(vector: lexical.Sparse) -> models.SparseVector:
    return models.SparseVector(indices=vector.indices, values=vector.values)


def _filter(spec: QdrantFilter) -> models.Filter:
    return models.Filter.model_validate(spec)


def _client_request(query: EngineQuery, scope: models.Filter) -> models.QueryRequest:
    vector = query.vector
    return models.QueryRequest(
        query=models.NearestQuery(
            nearest=_sparse(vector) if isinstance(vector, lexical.Sparse) else vector
        ),
        using=query.using,
        filter=scope if query.scoped else None,
        limit=query.limit,
        with_vector=[LEXICAL_VECTOR] if query.probe else None,
        with_payload=query.with_payload,
    )


def _scored(
    points: Sequence[models.ScoredPoint], *, with_lexical: bool = False
) -> list[ScoredChunk]:
    out: list[ScoredChunk] = []
    for p in points:
        sparse = None
        if with_lexical and isinstance(p.vector, dict):
            vector = p.vector.get(LEXICAL_VECTOR)
            if isinstance(vector, models.SparseVector):
                sparse = lexical.Sparse(list(vector.indices), list(vector.values))
        out.append(ScoredChunk(str(p.id), p.score, p.payload, sparse))
    return out


class QdrantIndex(PlannedSearch):
    """Async, coroutine-safe; create one per process and share it."""

    def __init__(
        self,
        *,
        url: str | None = None,
        path: str | Path | None = None,
        api_key: str | None = None,
        collection_name: str = DEFAULT_COLLECTION,
        dense_dim: int | None = None,
    ) -> None:
        if (url is None) == (path is None):
            raise ValueError("QdrantIndex needs exactly one of url= (server) or path= (local).")
        if dense_dim is not None and dense_dim <= 0:
            raise ValueError("dense_dim must be positive.")
        self.collection_name = collection_name
        self.dense_dim = dense_dim
        self.is_local = path is not None
        if path is not None:
            self._client = _local_clients.acquire(Path(path))
        else:
            self._client = AsyncQdrantClient(url=url, api_key=api_key)
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._closed = False

    @property
    def client(self) -> AsyncQdrantClient:
        return self._client

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.is_local or _local_clients.release(self._client):
            await self._client.close()

    # -- collection ---------------------------------------------------------------------

    async def ensure_collection(self) -> None:
        """Create the collection (and payload indexes) if missing; idempotent."""
        if self._ready:
            return
        async with self._ready_lock:
            if self._ready:
                return
            if await self._client.collection_exists(self.collection_name):
                await self._check_existing()
            else:
                await self._create()
            self._ready = True

    async def _create(self) -> None:
        dense = (
            {
                DENSE_VECTOR: models.VectorParams(
                    size=self.dense_dim, distance=models.Distance.COSINE
                )
            }
            if self.dense_dim
            else {}
        )
        try:
            await self._client.create_collection(
                self.collection_name,
                vectors_config=dense,
                sparse_vectors_config={
                    LEXICAL_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)
                },
            )
        except Exception:
            # Another process may have created it between exists() and create().
            if not await self._client.collection_exists(self.collection_name):
                raise
            await self._check_existing()
            return
        if self.is_local:  # local mode ignores payload indexes and warns about them
            return
        await self._client.create_payload_index(
            self.collection_name,
            "vector_store_id",
            field_schema=models.KeywordIndexParams(
                type=models.KeywordIndexType.KEYWORD, is_tenant=True
            ),
        )
        await self._client.create_payload_index(
            self.collection_name, "file_id", models.PayloadSchemaType.KEYWORD
        )

    async def _check_existing(self) -> None:
        params = (await self._client.get_collection(self.collection_name)).config.params
        if LEXICAL_VECTOR not in (params.sparse_vectors or {}):
            raise RuntimeError(
                f"Qdrant collection {self.collection_name!r} has no {LEXICAL_VECTOR!r} sparse "
                "vector; it was not created by opengrove."
            )
        if self.dense_dim is None:
            return
        vectors = params.vectors if isinstance(params.vectors, dict) else {}
        existing = vectors.get(DENSE_VECTOR)
        if existing is None or existing.size != self.dense_dim:
            found = "no dense vector" if existing is None else f"dimension {existing.size}"
            raise RuntimeError(
                f"Qdrant collection {self.collection_name!r} has {found}, but the embedding "
                f"model produces {self.dense_dim}; use another collection name or re-index."
            )

    # -- writes -------------------------------------------------------------------------

    async def upsert_chunks(
        self,
        vector_store_id: str,
        file_id: str,
        filename: str,
        chunks: Sequence[Chunk],
        attributes: Mapping[str, AttributeValue] | None = None,
        dense_vectors: Sequence[Sequence[float]] | None = None,
        *,
        replace: bool = True,
    ) -> int:
        check_dense(self.dense_dim, chunks, dense_vectors)
        await self.ensure_collection()
        if replace:  # re-indexing may produce fewer chunks than before
            await self.delete_file(vector_store_id, file_id)
        attrs = dict(attributes or {})
        points = await asyncio.to_thread(
            self._points, vector_store_id, file_id, filename, chunks, attrs, dense_vectors
        )
        for start in range(0, len(points), _UPSERT_BATCH):
            await self._client.upsert(
                self.collection_name, points[start : start + _UPSERT_BATCH], wait=True
            )
        return len(points)

    @staticmethod
    def _points(
        vector_store_id: str,
        file_id: str,
        filename: str,
        chunks: Sequence[Chunk],
        attrs: dict[str, AttributeValue],
        dense_vectors: Sequence[Sequence[float]] | None,
    ) -> list[models.PointStruct]:
        points: list[models.PointStruct] = []
        for i, chunk in enumerate(chunks):
            vector: dict[str, Any] = {}
            sparse = lexical.chunk_vector(chunk)
            if sparse is not None:
                vector[LEXICAL_VECTOR] = _sparse(sparse)
            if dense_vectors is not None:
                vector[DENSE_VECTOR] = list(dense_vectors[i])
            points.append(
                models.PointStruct(
                    id=point_id(vector_store_id, file_id, chunk.index),
                    vector=vector,
                    payload=chunk_payload(vector_store_id, file_id, filename, chunk, attrs),
                )
            )
        return points

    async def update_attributes(
        self, vector_store_id: str, file_id: str, attributes: Mapping[str, AttributeValue]
    ) -> None:
        """Replace the attributes on every chunk of a file in one store."""
        await self.ensure_collection()
        await self._client.set_payload(
            self.collection_name,
            payload=attribute_payload(attributes),
            points=models.FilterSelector(filter=_filter(scope_filter(vector_store_id, file_id))),
            wait=True,
        )

    async def delete_file(self, vector_store_id: str | None, file_id: str) -> None:
        """Remove a file's chunks from one store, or from every store when None."""
        await self._delete(_filter(scope_filter(vector_store_id, file_id)))

    async def delete_store(self, vector_store_id: str) -> None:
        await self._delete(_filter(scope_filter(vector_store_id)))

    async def _delete(self, selection: models.Filter) -> None:
        await self.ensure_collection()
        if self.is_local:
            await self._blank_sparse_vectors(selection)
        await self._client.delete(
            self.collection_name,
            points_selector=models.FilterSelector(filter=selection),
            wait=True,
        )

    async def _blank_sparse_vectors(self, selection: models.Filter) -> None:
        """Work around qdrant-client local mode (issue #1426) keeping deleted points' terms
        in its IDF document counts, which drives IDF, and so scores, negative. Replacing a
        vector does update the counts, so swap in an empty sparse vector before deleting."""
        offset: models.ExtendedPointId | None = None
        while True:
            records, offset = await self._client.scroll(
                self.collection_name,
                scroll_filter=selection,
                limit=_UPSERT_BATCH,
                offset=offset,
                with_payload=False,
                with_vectors=False,
            )
            if records:
                empty = models.SparseVector(indices=[], values=[])
                await self._client.update_vectors(
                    self.collection_name,
                    points=[
                        models.PointVectors(id=r.id, vector={LEXICAL_VECTOR: empty})
                        for r in records
                    ],
                    wait=True,
                )
            if offset is None:
                return

    async def maintain(self) -> None:
        """Nothing to do: a Qdrant server flushes and optimises by itself."""

    async def ping(self) -> None:
        """Raise if Qdrant cannot be reached (for /health)."""
        await self.client.get_collections()

    async def count_chunks(self, vector_store_id: str, file_id: str | None = None) -> int:
        await self.ensure_collection()
        result = await self._client.count(
            self.collection_name,
            count_filter=_filter(scope_filter(vector_store_id, file_id)),
            exact=True,
        )
        return result.count

    async def store_ids(self) -> set[str]:
        return await self._facet("vector_store_id", None)

    async def file_ids(self, vector_store_id: str) -> set[str]:
        return await self._facet("file_id", scope_filter(vector_store_id))

    async def _facet(self, key: str, selection: QdrantFilter | None) -> set[str]:
        await self.ensure_collection()
        response = await self._client.facet(
            self.collection_name,
            key,
            facet_filter=_filter(selection) if selection else None,
            limit=_FACET_LIMIT,
            exact=True,
        )
        return {str(hit.value) for hit in response.hits if hit.count > 0}

    # -- search -------------------------------------------------------------------------

    async def run_queries(
        self, queries: Sequence[EngineQuery], scope: QdrantFilter
    ) -> list[list[ScoredChunk]]:
        await self.ensure_collection()
        client_scope = _filter(scope)
        responses = await self._client.query_batch_points(
            self.collection_name, [_client_request(q, client_scope) for q in queries]
        )
        return [
            _scored(response.points, with_lexical=q.probe)
            for q, response in zip(queries, responses, strict=True)
        ]

    async def payloads(self, point_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        records = await self._client.retrieve(
            self.collection_name, list(point_ids), with_payload=True, with_vectors=False
        )
        return {str(record.id): record.payload or {} for record in records}
