"""The vector index as the rest of the app sees it: one interface, two backends, opened on
first use.

`VectorIndex` is what services, tools and ingestion call. Its backends:
- `EdgeIndex` (`app.retrieval.edge_index`): Qdrant Edge, the Qdrant engine in process, on
  disk under the data dir: the embedded default. One process may open it (a file lock).
- `QdrantIndex` (`app.retrieval.qdrant_index`): qdrant-client, for a Qdrant server at
  QDRANT_URL (several processes and machines).

Both store the same points (ids, payload, the in-process BM25 sparse vector of
`app.retrieval.lexical`, the optional dense vector) and share one `search`
(`PlannedSearch`): the same plan (`SearchPlan` below: IDF probes, the lexical and dense
sources) sent as one batch, RRF fusion and score normalisation here. Each backend only
translates the plan's queries into its engine's requests. So both rank alike; tests run
the plan on both.

Importing an engine and opening an index take time, so `LazyIndex` defers both to a worker
thread on first use (or to `open_in_background()` right after start): the server answers at
once, and the first request that needs the index waits for it instead of failing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from app.errors import APIError
from app.retrieval import lexical
from app.retrieval.filters import ATTRIBUTES_FIELD, AttributeValue, QdrantFilter, build_filter

if TYPE_CHECKING:
    from app.retrieval.chunking import Chunk

logger = logging.getLogger("opengrove.index")

MAX_NUM_RESULTS = 50
LEXICAL_VECTOR = "lexical"
DENSE_VECTOR = "dense"
# Booleans again, as "true"/"false" strings: Qdrant Edge's Python binding turns a boolean
# match value into an integer (which never matches a boolean), so Edge filters on these.
BOOL_SHADOW_FIELD = "attribute_flags"
RRF_K = 2  # Qdrant's default constant: rank 1 weighs 1/2, rank 10 1/11
_POINT_NAMESPACE = uuid.UUID("6f1d7c5e-3b7a-4c1e-9a53-0f3e2d1c4b5a")
_NAMESPACE_BYTES = _POINT_NAMESPACE.bytes


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
        *,
        replace: bool = True,
    ) -> int:
        """Write chunks (point ids from store, file and chunk index); with `replace`, the
        file's other chunks in the store are removed first. Returns the points written."""

    async def update_attributes(
        self, vector_store_id: str, file_id: str, attributes: Mapping[str, AttributeValue]
    ) -> None: ...

    async def delete_file(self, vector_store_id: str | None, file_id: str) -> None: ...

    async def delete_store(self, vector_store_id: str) -> None: ...

    async def count_chunks(self, vector_store_id: str, file_id: str | None = None) -> int: ...

    async def store_ids(self) -> set[str]:
        """Every vector store id holding points (for reconciliation)."""

    async def file_ids(self, vector_store_id: str) -> set[str]:
        """Every file id holding points in one store (for reconciliation)."""

    async def search(
        self,
        vector_store_ids: Sequence[str],
        query: str,
        dense_query: Sequence[float] | None = None,
        max_num_results: int = 10,
        score_threshold: float = 0.0,
        filters: Mapping[str, Any] | None = None,
    ) -> list[SearchHit]: ...

    async def maintain(self) -> None:
        """Periodic upkeep (the embedded engine flushes and optimises; a server does its own)."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class IndexUnavailable(APIError):
    def __init__(self, reason: str) -> None:
        super().__init__(503, reason, type="server_error")


# -- what both backends share ------------------------------------------------------------


def point_id(vector_store_id: str, file_id: str, chunk_index: int) -> str:
    """`str(uuid.uuid5(_POINT_NAMESPACE, "<store>/<file>/<chunk index>"))`, a few times faster
    (ingestion makes one per chunk)."""
    name = f"{vector_store_id}/{file_id}/{chunk_index}".encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest())
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest[:16].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def attribute_payload(attributes: Mapping[str, AttributeValue]) -> dict[str, Any]:
    """The payload fields derived from a file's attributes (written and replaced together)."""
    return {
        ATTRIBUTES_FIELD: dict(attributes),
        BOOL_SHADOW_FIELD: {
            k: "true" if v else "false" for k, v in attributes.items() if isinstance(v, bool)
        },
    }


def chunk_payload(
    vector_store_id: str,
    file_id: str,
    filename: str,
    chunk: Chunk,
    attributes: Mapping[str, AttributeValue],
) -> dict[str, Any]:
    """A chunk's payload. The attribute fields are left out while empty (as good as empty
    to every filter and read, and converting an empty object costs Qdrant Edge's binding as
    much as all the other fields together); `update_attributes` always writes both."""
    payload = {
        "vector_store_id": vector_store_id,
        "file_id": file_id,
        "filename": filename,
        "chunk_index": chunk.index,
        "token_count": chunk.token_count,
        "text": chunk.text,
    }
    if attributes:
        for key, value in attribute_payload(attributes).items():
            if value:
                payload[key] = value
    return payload


def check_dense(
    dense_dim: int | None, chunks: Sequence[Any], dense_vectors: Sequence[Sequence[float]] | None
) -> None:
    if dense_vectors is None:
        return
    if dense_dim is None:
        raise ValueError("dense_vectors given but the index has no dense_dim configured.")
    if len(dense_vectors) != len(chunks):
        raise ValueError(f"Got {len(dense_vectors)} dense vectors for {len(chunks)} chunks.")
    if any(len(v) != dense_dim for v in dense_vectors):
        raise ValueError(f"Every dense vector must have dimension {dense_dim}.")


def scope_filter(vector_store_id: str | None = None, file_id: str | None = None) -> QdrantFilter:
    must: list[QdrantFilter] = []
    if vector_store_id is not None:
        must.append({"key": "vector_store_id", "match": {"value": vector_store_id}})
    if file_id is not None:
        must.append({"key": "file_id", "match": {"value": file_id}})
    return {"must": must}


@dataclass(slots=True)
class ScoredChunk:
    """A point as an engine returned it, in backend-neutral form."""

    id: str
    score: float
    payload: dict[str, Any] | None = None
    lexical: lexical.Sparse | None = None  # only on IDF probes


@dataclass(frozen=True, slots=True)
class EngineQuery:
    """One nearest-neighbour query of a plan, which each backend translates into its
    engine's request: `vector` against the named vector `using`, the best `limit` points,
    inside the plan's scope when `scoped`, with their payload when `with_payload`. An IDF
    `probe` returns the point's stored lexical vector too; other queries no vector."""

    using: str
    vector: lexical.Sparse | list[float]
    limit: int
    scoped: bool = True
    with_payload: bool = True
    probe: bool = False


@dataclass
class SearchPlan:
    """One search, as the queries every backend sends in one batch and the arithmetic that
    turns the answers into hits.

    Queries (`queries()`), in order: one IDF probe per query term (unfiltered, 1 result, its
    lexical vector), then the lexical source, then the dense source. When both sources run,
    they are fused here (`rrf`), not in the engine (which would run each source a second
    time as a prefetch), and they return no payload: of their candidates (3x the results
    asked for, each) only the hits' payloads are read, afterwards (`payload_ids`). Payload
    pages are what a search reads from disk when the index is cold.

    Scores are normalised to 0..1 so `score_threshold` means something:
    - lexical: raw BM25 / the sum of the query terms' IDF, capped at 1. A chunk holding every
      query term about once (at average length) scores ~1; missing rare terms costs more
      than missing common ones. No engine exposes IDF, so each term's is recovered from its
      probe (the probe's score / the stored weight).
    - dense: cosine similarity clamped to 0..1.
    - hybrid: order from the RRF fusion; a hit's score is the best of its normalised
      lexical and dense scores (RRF values only encode ranks, not relevance).
    """

    scope: QdrantFilter
    terms: list[int]
    dense: list[float] | None
    max_num_results: int
    score_threshold: float

    @property
    def lexical_query(self) -> lexical.Sparse | None:
        return lexical.Sparse(self.terms, [1.0] * len(self.terms)) if self.terms else None

    @property
    def hybrid(self) -> bool:
        return self.dense is not None and bool(self.terms)

    @property
    def limit(self) -> int:
        # Fusion needs candidates beyond the final cut.
        return max(3 * self.max_num_results, 30) if self.hybrid else self.max_num_results

    @property
    def empty(self) -> bool:
        return not self.terms and self.dense is None

    def queries(self) -> list[EngineQuery]:
        # Probes are unfiltered on purpose: IDF is collection-wide, any chunk with the term works.
        queries = [
            EngineQuery(
                LEXICAL_VECTOR,
                lexical.single_term(term),
                1,
                scoped=False,
                with_payload=False,
                probe=True,
            )
            for term in self.terms
        ]
        with_payload = not self.hybrid
        lexical_query = self.lexical_query
        if lexical_query is not None:
            queries.append(
                EngineQuery(LEXICAL_VECTOR, lexical_query, self.limit, with_payload=with_payload)
            )
        if self.dense is not None:
            queries.append(
                EngineQuery(DENSE_VECTOR, self.dense, self.limit, with_payload=with_payload)
            )
        return queries

    def ranked(self, answers: Sequence[Sequence[ScoredChunk]]) -> list[ScoredChunk]:
        """The hits' points, best first, each with its normalised score, from the engine's
        answers to `queries()` (same order). A hybrid plan's have no payload yet."""
        n = len(self.terms)
        probes = answers[:n]
        lexical_points = answers[n] if self.terms else []
        dense_points = answers[-1] if self.dense is not None else []
        scores: dict[str, float] = {}
        if self.terms:
            idf_sum = idf_total(self.terms, probes)
            for p in lexical_points:
                scores[p.id] = min(1.0, p.score / idf_sum) if idf_sum > 0 else 0.0
        for p in dense_points:
            scores[p.id] = max(scores.get(p.id, 0.0), min(1.0, max(0.0, p.score)))
        if self.hybrid:  # (the sources return no payload then)
            order = [point_id for point_id, _ in rrf([lexical_points, dense_points])]
            payloads: dict[str, dict[str, Any] | None] = {}
        else:
            points = lexical_points or dense_points
            order = [p.id for p in points]
            payloads = {p.id: p.payload for p in points}
        chosen: list[ScoredChunk] = []
        for point_id in order[: self.limit]:
            score = scores.get(point_id, 0.0)
            if score <= 0.0 or score < self.score_threshold:
                continue
            chosen.append(ScoredChunk(point_id, score, payloads.get(point_id)))
            if len(chosen) == self.max_num_results:
                break
        return chosen

    def payload_ids(self, ranked: Sequence[ScoredChunk]) -> list[str]:
        """The points whose payload is still to be read (a hybrid plan's hits)."""
        return [point.id for point in ranked] if self.hybrid else []


def rrf(rankings: Sequence[Sequence[ScoredChunk]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Reciprocal rank fusion as Qdrant computes it (`Fusion.RRF`): a point scores the sum,
    over the rankings holding it, of 1 / (k + its 0-based position). Point ids and fused
    scores, best first.

    Ties are common (positions 0 and 3 fuse like 3 and 0). Qdrant leaves them in hash
    order; here they keep the order of first appearance (the first ranking's before the
    second's), compared after rounding so that float addition cannot split them."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for position, point in enumerate(ranking):
            fused[point.id] = fused.get(point.id, 0.0) + 1.0 / (k + position)
    return sorted(fused.items(), key=lambda item: round(item[1], 9), reverse=True)


def make_plan(
    vector_store_ids: Sequence[str],
    query: str,
    dense_query: Sequence[float] | None,
    dense_dim: int | None,
    max_num_results: int,
    score_threshold: float,
    filters: Mapping[str, Any] | None,
) -> SearchPlan | None:
    """Validate a search and plan it; None when nothing can match."""
    if not 1 <= max_num_results <= MAX_NUM_RESULTS:
        raise ValueError(
            f"max_num_results must be between 1 and {MAX_NUM_RESULTS}, got {max_num_results}."
        )
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be between 0 and 1, got {score_threshold}.")
    if dense_query is not None:
        if dense_dim is None:
            raise ValueError("dense_query given but the index has no dense_dim configured.")
        if len(dense_query) != dense_dim:
            raise ValueError(f"dense_query must have dimension {dense_dim}.")
    if not vector_store_ids:
        return None
    scope: QdrantFilter = {
        "must": [
            {"key": "vector_store_id", "match": {"any": list(vector_store_ids)}},
            *([build_filter(filters)] if filters else []),
        ]
    }
    plan = SearchPlan(
        scope=scope,
        terms=lexical.query_terms(query),
        dense=list(dense_query) if dense_query is not None else None,
        max_num_results=max_num_results,
        score_threshold=score_threshold,
    )
    return None if plan.empty else plan


def idf_total(terms: Sequence[int], probes: Sequence[Sequence[ScoredChunk]]) -> float:
    """Sum of the engine's IDF over query terms present in the collection.

    A probe for term t returns a chunk scoring idf(t) * w, w being the chunk's stored weight
    for t, so idf(t) = score / w. Terms found nowhere cannot match anything and are left out
    rather than dragging every score down.
    """
    total = 0.0
    for term, probe in zip(terms, probes, strict=True):
        if not probe or probe[0].lexical is None:
            continue
        vector = probe[0].lexical
        try:
            weight = vector.values[vector.indices.index(term)]
        except ValueError:
            continue
        if weight > 0:
            total += probe[0].score / weight
    return total


def to_hit(payload: Mapping[str, Any], score: float) -> SearchHit:
    return SearchHit(
        vector_store_id=str(payload.get("vector_store_id", "")),
        file_id=str(payload.get("file_id", "")),
        filename=str(payload.get("filename", "")),
        score=round(score, 6),
        text=str(payload.get("text", "")),
        chunk_index=int(payload.get("chunk_index", 0)),
        attributes=dict(payload.get(ATTRIBUTES_FIELD) or {}),
    )


class PlannedSearch:
    """`search` as both backends run it: validate and plan (`make_plan`), send the plan's
    queries to the engine in one batch (`run_queries`, the backend's part: translating
    each `EngineQuery` into its engine's request and each answer back into
    `ScoredChunk`s), rank (`SearchPlan.ranked`), and read the payloads still missing
    (`payloads`, the backend's part too). A point deleted in between is left out."""

    dense_dim: int | None

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
        plan = make_plan(
            vector_store_ids,
            query,
            dense_query,
            self.dense_dim,
            max_num_results,
            score_threshold,
            filters,
        )
        if plan is None:
            return []
        ranked = plan.ranked(await self.run_queries(plan.queries(), plan.scope))
        missing = plan.payload_ids(ranked)
        if missing:
            read = await self.payloads(missing)
            ranked = [ScoredChunk(p.id, p.score, read[p.id]) for p in ranked if p.id in read]
        return [to_hit(point.payload or {}, point.score) for point in ranked]

    async def run_queries(
        self, queries: Sequence[EngineQuery], scope: QdrantFilter
    ) -> list[list[ScoredChunk]]:
        """The engine's answers to `queries`, in order; scoped queries filtered by `scope`."""
        raise NotImplementedError

    async def payloads(self, point_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The payloads of the points among `point_ids` that exist, by point id."""
        raise NotImplementedError


# -- opened on first use -----------------------------------------------------------------


class LazyIndex:
    """A `VectorIndex` whose backend is built (in a thread) when first needed."""

    def __init__(self, build: Callable[[], VectorIndex], dense_dim: int | None) -> None:
        self.dense_dim = dense_dim
        self._build = build
        self._backend: VectorIndex | None = None
        self._opening: asyncio.Task[VectorIndex] | None = None
        self.elsewhere: str | None = None  # why this process must not open it
        self.pending_deletes: list[tuple[str, str | None, str | None]] = []  # to retry

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
        *,
        replace: bool = True,
    ) -> int:
        backend = await self.backend()
        return await backend.upsert_chunks(
            vector_store_id,
            file_id,
            filename,
            chunks,
            attributes,
            dense_vectors,
            replace=replace,
        )

    async def update_attributes(
        self, vector_store_id: str, file_id: str, attributes: Mapping[str, AttributeValue]
    ) -> None:
        await (await self.backend()).update_attributes(vector_store_id, file_id, attributes)

    async def delete_file(self, vector_store_id: str | None, file_id: str) -> None:
        await self._delete(("file", vector_store_id, file_id))

    async def delete_store(self, vector_store_id: str) -> None:
        await self._delete(("store", vector_store_id, None))

    async def _delete(self, what: tuple[str, str | None, str | None]) -> None:
        """Deletes never fail their caller (the database, already committed, is the truth
        and search hides chunks of missing files): a failed one is queued and retried by
        `maintain()`; after a crash `reconcile` finds what is left."""
        try:
            await self._apply(what)
        except IndexUnavailable:
            raise
        except Exception:
            logger.warning("index delete %s failed; will retry", what, exc_info=True)
            self.pending_deletes.append(what)

    async def _apply(self, what: tuple[str, str | None, str | None]) -> None:
        backend = await self.backend()
        kind, store_id, file_id = what
        if kind == "store":
            assert store_id is not None
            await backend.delete_store(store_id)
        else:
            assert file_id is not None
            await backend.delete_file(store_id, file_id)

    async def count_chunks(self, vector_store_id: str, file_id: str | None = None) -> int:
        return await (await self.backend()).count_chunks(vector_store_id, file_id)

    async def store_ids(self) -> set[str]:
        return await (await self.backend()).store_ids()

    async def file_ids(self, vector_store_id: str) -> set[str]:
        return await (await self.backend()).file_ids(vector_store_id)

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

    async def maintain(self) -> None:
        if self._backend is None:
            return
        pending, self.pending_deletes = self.pending_deletes, []
        for position, what in enumerate(pending):
            try:
                await self._apply(what)
            except Exception:
                self.pending_deletes.extend(pending[position:])
                logger.warning("retrying index deletes failed; later again", exc_info=True)
                break
        await self._backend.maintain()

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
    """The process-wide index: a Qdrant server at QDRANT_URL, else Qdrant Edge on disk under
    the data dir.

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
        if settings.qdrant_url:
            from app.retrieval.qdrant_index import QdrantIndex

            return QdrantIndex(
                url=settings.qdrant_url, api_key=settings.qdrant_api_key, dense_dim=dense_dim
            )
        from app.retrieval.edge_index import EdgeIndex

        return EdgeIndex(settings.index_path, dense_dim=dense_dim)

    return LazyIndex(build, dense_dim)
