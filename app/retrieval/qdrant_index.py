"""The Qdrant backend of the vector index (the only module importing qdrant-client).

Chunk storage and hybrid search over one shared Qdrant collection.

Every vector store's chunks live in a single collection, separated by the payload
field `vector_store_id` (Qdrant's recommended multitenancy layout); `file_id` and
`attributes.<key>` are payload too, so deletes and attribute filters are filter ops.

Each point has a sparse `lexical` vector (BM25 tf weights, IDF applied by Qdrant) and,
when an embedding dimension is configured, a dense `dense` vector (cosine).

Scores are normalised to 0..1 so `score_threshold` means something:
- lexical: raw BM25 / sum of the query terms' IDF, capped at 1. A chunk that holds every
  query term about once (at average length) scores ~1; missing rare terms costs more
  than missing common ones. Qdrant does not expose IDF, so it is recovered per query
  term with a 1-result probe in the same batch request (score / stored weight).
- dense: cosine similarity clamped to 0..1.
- hybrid: order comes from Qdrant's RRF fusion; a hit's score is the best of its
  normalised lexical and dense scores (RRF values only encode ranks, not relevance).

Local (embedded) mode supports everything used here (IDF modifier, prefetch + RRF
fusion, nested payload filters) except payload indexes, which it ignores, so we skip
them there. Two local-mode workarounds below: IDF read from the engine instead of
probed (speed), and sparse vectors blanked before deletes (stale IDF counts bug).
Local mode holds a file lock per path, so clients for local paths are shared per
process through a reference-counted registry. Its operations run synchronously on the
event loop (numpy scans over all points): fine for small deployments only.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qdrant_client import AsyncQdrantClient, models

from app.retrieval import lexical
from app.retrieval.chunking import Chunk
from app.retrieval.filters import ATTRIBUTES_FIELD, AttributeValue, build_filter
from app.retrieval.index import MAX_NUM_RESULTS, SearchHit

DEFAULT_COLLECTION = "opengrove_chunks"
LEXICAL_VECTOR = "lexical"
DENSE_VECTOR = "dense"
_UPSERT_BATCH = 256
_POINT_NAMESPACE = uuid.UUID("6f1d7c5e-3b7a-4c1e-9a53-0f3e2d1c4b5a")


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


class QdrantIndex:
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
        keyword = models.PayloadSchemaType.KEYWORD
        await self._client.create_payload_index(
            self.collection_name,
            "vector_store_id",
            field_schema=models.KeywordIndexParams(
                type=models.KeywordIndexType.KEYWORD, is_tenant=True
            ),
        )
        await self._client.create_payload_index(self.collection_name, "file_id", keyword)

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
    ) -> int:
        """Replace the file's chunks in the store; returns the number of points written."""
        if dense_vectors is not None:
            if self.dense_dim is None:
                raise ValueError("dense_vectors given but the index has no dense_dim configured.")
            if len(dense_vectors) != len(chunks):
                raise ValueError(
                    f"Got {len(dense_vectors)} dense vectors for {len(chunks)} chunks."
                )
            if any(len(v) != self.dense_dim for v in dense_vectors):
                raise ValueError(f"Every dense vector must have dimension {self.dense_dim}.")
        await self.ensure_collection()
        # Re-indexing may produce fewer chunks than before: drop the old ones first.
        await self.delete_file(vector_store_id, file_id)
        attrs = dict(attributes or {})
        points: list[models.PointStruct] = []
        for i, chunk in enumerate(chunks):
            vector: dict[str, Any] = {}
            sparse = lexical.document_vector(chunk.text)
            if sparse is not None:
                vector[LEXICAL_VECTOR] = sparse
            if dense_vectors is not None:
                vector[DENSE_VECTOR] = list(dense_vectors[i])
            points.append(
                models.PointStruct(
                    id=str(uuid.uuid5(_POINT_NAMESPACE, f"{vector_store_id}/{file_id}/{i}")),
                    vector=vector,
                    payload={
                        "vector_store_id": vector_store_id,
                        "file_id": file_id,
                        "filename": filename,
                        "chunk_index": chunk.index,
                        "token_count": chunk.token_count,
                        "text": chunk.text,
                        ATTRIBUTES_FIELD: attrs,
                    },
                )
            )
        for start in range(0, len(points), _UPSERT_BATCH):
            await self._client.upsert(
                self.collection_name, points[start : start + _UPSERT_BATCH], wait=True
            )
        return len(points)

    async def update_attributes(
        self, vector_store_id: str, file_id: str, attributes: Mapping[str, AttributeValue]
    ) -> None:
        """Replace the attributes on every chunk of a file in one store."""
        await self.ensure_collection()
        await self._client.set_payload(
            self.collection_name,
            payload={ATTRIBUTES_FIELD: dict(attributes)},
            points=models.FilterSelector(filter=self._scope(vector_store_id, file_id)),
            wait=True,
        )

    async def delete_file(self, vector_store_id: str | None, file_id: str) -> None:
        """Remove a file's chunks from one store, or from every store when None."""
        await self._delete(self._scope(vector_store_id, file_id))

    async def delete_store(self, vector_store_id: str) -> None:
        await self._delete(self._scope(vector_store_id))

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
        """Work around qdrant-client local mode (<= 1.16, issue #1426) keeping deleted
        points' terms in its IDF document counts, which drives IDF, and so scores,
        negative. Replacing a vector does update the counts, so swap in an empty
        sparse vector before deleting; harmless once the upstream fix lands."""
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

    async def ping(self) -> None:
        """Raise if Qdrant cannot be reached (for /health)."""
        await self.client.get_collections()

    async def count_chunks(self, vector_store_id: str, file_id: str | None = None) -> int:
        await self.ensure_collection()
        result = await self._client.count(
            self.collection_name, count_filter=self._scope(vector_store_id, file_id), exact=True
        )
        return result.count

    @staticmethod
    def _scope(vector_store_id: str | None, file_id: str | None = None) -> models.Filter:
        must: list[models.Condition] = []
        if vector_store_id is not None:
            must.append(_match("vector_store_id", vector_store_id))
        if file_id is not None:
            must.append(_match("file_id", file_id))
        return models.Filter(must=must)

    # -- search -------------------------------------------------------------------------

    async def search(
        self,
        vector_store_ids: Sequence[str],
        query: str,
        dense_query: Sequence[float] | None = None,
        max_num_results: int = 10,
        score_threshold: float = 0.0,
        filters: Mapping[str, Any] | None = None,
    ) -> list[SearchHit]:
        """Best chunks for `query` across the given stores, best first."""
        if not 1 <= max_num_results <= MAX_NUM_RESULTS:
            raise ValueError(
                f"max_num_results must be between 1 and {MAX_NUM_RESULTS}, got {max_num_results}."
            )
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be between 0 and 1, got {score_threshold}.")
        if dense_query is not None:
            if self.dense_dim is None:
                raise ValueError("dense_query given but the index has no dense_dim configured.")
            if len(dense_query) != self.dense_dim:
                raise ValueError(f"dense_query must have dimension {self.dense_dim}.")
        if not vector_store_ids:
            return []
        scope = models.Filter(
            must=[
                models.FieldCondition(
                    key="vector_store_id", match=models.MatchAny(any=list(vector_store_ids))
                ),
                *([models.Filter.model_validate(build_filter(filters))] if filters else []),
            ]
        )
        terms = lexical.query_terms(query)
        if not terms and dense_query is None:
            return []
        await self.ensure_collection()

        hybrid = dense_query is not None and bool(terms)
        # Fusion needs candidates beyond the final cut, and so does score_threshold.
        limit = max(3 * max_num_results, 30) if hybrid else max_num_results
        sources: list[models.QueryRequest] = []
        if terms:
            sources.append(self._source(lexical.query_vector(terms), LEXICAL_VECTOR, scope, limit))
        if dense_query is not None:
            sources.append(self._source(list(dense_query), DENSE_VECTOR, scope, limit))
        fused: list[models.QueryRequest] = []
        if hybrid:
            fused.append(
                models.QueryRequest(
                    prefetch=[
                        models.Prefetch(query=s.query, using=s.using, filter=scope, limit=limit)
                        for s in sources
                    ],
                    query=models.FusionQuery(fusion=models.Fusion.RRF),
                    filter=scope,
                    limit=limit,
                    with_payload=True,
                )
            )
        # One round trip: IDF probes, each source on its own (for scores), then the fusion.
        local_idf = self._local_idf_sum(terms) if terms else None
        probes = [self._idf_probe(t) for t in terms] if local_idf is None else []
        responses = await self._client.query_batch_points(
            self.collection_name, [*probes, *sources, *fused]
        )
        probe_results = responses[: len(probes)]
        source_results = responses[len(probes) : len(probes) + len(sources)]

        scores: dict[str | int, float] = {}
        if terms:
            idf_sum = local_idf if local_idf is not None else _idf_sum(terms, probe_results)
            for p in source_results[0].points:
                scores[p.id] = min(1.0, p.score / idf_sum) if idf_sum > 0 else 0.0
        if dense_query is not None:
            for p in source_results[-1].points:
                scores[p.id] = max(scores.get(p.id, 0.0), min(1.0, max(0.0, p.score)))
        ranked = responses[-1].points  # the fusion when hybrid, else the only source

        hits: list[SearchHit] = []
        for point in ranked:
            score = scores.get(point.id, 0.0)
            if score <= 0.0 or score < score_threshold:
                continue
            hits.append(_hit(point, score))
            if len(hits) == max_num_results:
                break
        return hits

    @staticmethod
    def _source(
        vector: models.SparseVector | list[float], using: str, scope: models.Filter, limit: int
    ) -> models.QueryRequest:
        return models.QueryRequest(
            query=models.NearestQuery(nearest=vector),
            using=using,
            filter=scope,
            limit=limit,
            with_payload=True,
        )

    def _local_idf_sum(self, terms: list[int]) -> float | None:
        """Local mode only: read IDF from the embedded engine instead of probing.

        Local mode scores a query by scanning every point in Python, so one probe per
        term would multiply search latency by the number of query terms. This reaches
        into qdrant-client internals (pinned version); on any mismatch we fall back to
        probes, and a test checks both paths agree.
        """
        if not self.is_local:
            return None
        try:
            collection = self._client._client.collections[self.collection_name]  # type: ignore[attr-defined]
            doc_freq = collection.sparse_vectors_idf.get(LEXICAL_VECTOR, {})
            weighted = collection._rescore_idf(lexical.query_vector(terms), LEXICAL_VECTOR)
            return float(
                sum(
                    idf
                    for term, idf in zip(weighted.indices, weighted.values, strict=True)
                    if doc_freq.get(term, 0) > 0
                )
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            return None

    @staticmethod
    def _idf_probe(term: int) -> models.QueryRequest:
        # Unfiltered on purpose: IDF is collection-wide, any chunk holding the term works.
        return models.QueryRequest(
            query=models.NearestQuery(nearest=lexical.query_vector([term])),
            using=LEXICAL_VECTOR,
            limit=1,
            with_vector=[LEXICAL_VECTOR],
            with_payload=False,
        )


def _match(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _idf_sum(terms: list[int], probes: Sequence[models.QueryResponse]) -> float:
    """Sum of Qdrant's IDF over query terms present in the collection.

    A probe for term t returns a chunk with score idf(t) * w, w being the chunk's stored
    weight for t, so idf(t) = score / w. Terms found nowhere cannot match anything and
    are left out rather than dragging every score down.
    """
    total = 0.0
    for term, probe in zip(terms, probes, strict=True):
        if not probe.points:
            continue
        point = probe.points[0]
        vector = point.vector.get(LEXICAL_VECTOR) if isinstance(point.vector, dict) else None
        if not isinstance(vector, models.SparseVector):
            continue
        try:
            weight = vector.values[vector.indices.index(term)]
        except ValueError:
            continue
        if weight > 0:
            total += point.score / weight
    return total


def _hit(point: models.ScoredPoint, score: float) -> SearchHit:
    payload = point.payload or {}
    return SearchHit(
        vector_store_id=str(payload.get("vector_store_id", "")),
        file_id=str(payload.get("file_id", "")),
        filename=str(payload.get("filename", "")),
        score=round(score, 6),
        text=str(payload.get("text", "")),
        chunk_index=int(payload.get("chunk_index", 0)),
        attributes=dict(payload.get(ATTRIBUTES_FIELD) or {}),
    )
