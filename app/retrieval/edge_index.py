"""The embedded backend of the vector index: Qdrant Edge (the only qdrant_edge import
besides the BM25 encoder in `lexical`).

Qdrant Edge is the Qdrant engine itself, in process, on disk (the same segment format as
the server): a sparse inverted index with the IDF modifier for BM25, HNSW for dense
vectors, payload indexes. One shard under the data dir holds every vector store's chunks,
separated by the payload field `vector_store_id` (a tenant keyword index), with `file_id`
indexed too. Searches are `app.retrieval.index.PlannedSearch`, as
on the Qdrant-server backend; this module only translates the plan's queries.

Edge has no lock of its own: a second process opening the folder would corrupt it. So the
shard is opened under an exclusive `flock` on `<path>/opengrove.lock`, held for the life of
the index; a second opener gets `IndexLocked`, which says to use QDRANT_URL.

Engine calls block (Rust, mostly without the GIL), so they run in worker threads. Writes
go to the write-ahead log at once; `maintain()` (called periodically) flushes segments to
disk once writes have happened, and optimises (merges segments and builds indexes, at a
memory cost while it runs) once enough points were written and writes have paused.

Memory: new points go to one appendable segment whose BM25 inverted index is in RAM, and an
optimisation builds a whole segment in memory. So both are bounded: a long ingestion is
optimised every OPTIMIZE_WHILE_WRITING_POINTS points without waiting for a pause (writes go
on meanwhile), and no optimisation builds a segment whose largest vector storage passes
MAX_SEGMENT_KB (pinned: Edge's default grows with the machine's CPU count).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from app.retrieval import lexical
from app.retrieval.chunking import Chunk
from app.retrieval.filters import ATTRIBUTES_FIELD, AttributeValue, QdrantFilter
from app.retrieval.index import (
    BOOL_SHADOW_FIELD,
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

logger = logging.getLogger("opengrove.index")

LOCK_FILE = "opengrove.lock"
CONFIG_FILE = "edge_config.json"
_UPSERT_BATCH = 512
FLUSH_AFTER_SECONDS = 30.0  # maintain(): flush when writes are at least this old
OPTIMIZE_AFTER_POINTS = 50_000  # maintain(): optimise after this many writes ...
OPTIMIZE_IDLE_SECONDS = 30.0  # ... once no write came for this long,
OPTIMIZE_WHILE_WRITING_POINTS = 200_000  # or after this many even while writes go on
# The largest vector storage (KB) of a segment the optimiser builds: the BM25 vectors, ~2 KB
# a chunk, so ~250k chunks. Edge's default grows with the CPU count (256 MB each).
MAX_SEGMENT_KB = 512_000
FLUSH_EVERY_POINTS = 10_000  # flush during long ingestions too, then let go of the pages
# written (`release_resident_pages`): until then they stay resident and count in RSS
_FACET_LIMIT = 1_000_000


class IndexLocked(RuntimeError):
    pass


_MADV_DONTNEED = 4
_RELEASED = ("/payload_storage/", f"/vector_storage-{LEXICAL_VECTOR}/", f"{os.sep}wal{os.sep}")
_madvise: Any = None
_libc: Any = None


def release_resident_pages(path: Path) -> int:
    """Unmap from this process the resident pages of the shard's shared file mappings
    (`madvise(MADV_DONTNEED)`); returns the bytes of mappings advised.

    Edge writes payload and vector pages through shared mmaps (`Memory.Cold`: on disk),
    and every page written or read stays mapped, so RSS grows by about 4 KB per chunk
    written until the kernel needs the memory. After a flush those pages are clean page
    cache: dropping them from this process's page tables loses nothing (a dirty shared
    page's dirty bit moves to the page cache, so even unflushed data is kept) and the next
    access maps them again. Private mappings are left alone (dropping them would discard
    their changes). Only what ingestion writes in bulk is let go of (`_RELEASED`: payload
    storage, the BM25 vectors' storage, the WAL), of which a search reads a few pages;
    what searches scan (the inverted index, HNSW graphs, dense vectors, payload indexes)
    stays mapped, so searches after a flush do not start cold. Linux only; elsewhere a
    no-op."""
    global _madvise, _libc
    if _madvise is None:
        try:
            import ctypes

            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            _madvise = _libc.madvise
        except (OSError, AttributeError):
            _madvise = False
    if not _madvise:
        return 0
    prefix = str(path.resolve()) + os.sep
    released = 0
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) < 6 or fields[1][3:4] != "s" or not fields[5].startswith(prefix):
                    continue
                if not any(part in fields[5] for part in _RELEASED):
                    continue
                low, high = (int(x, 16) for x in fields[0].split("-"))
                if _madvise(low, high - low, _MADV_DONTNEED) == 0:
                    released += high - low
    except OSError:
        return released
    with contextlib.suppress(AttributeError):
        _libc.malloc_trim(0)  # and hand freed heap back (the optimiser frees a lot at once)
    return released


def _to_sparse(vector: lexical.Sparse) -> qe.SparseVector:
    return qe.SparseVector(vector.indices, vector.values)


def to_edge_filter(spec: QdrantFilter) -> qe.Filter:
    """A Qdrant JSON filter (as `app.retrieval.filters` builds them) as an Edge `Filter`."""
    return qe.Filter(
        must=[_condition(c) for c in spec.get("must", [])] or None,
        should=[_condition(c) for c in spec.get("should", [])] or None,
        must_not=[_condition(c) for c in spec.get("must_not", [])] or None,
    )


def _condition(spec: QdrantFilter) -> Any:
    if "key" not in spec:
        return to_edge_filter(spec)
    key = spec["key"]
    if "match" in spec:
        match = spec["match"]
        if isinstance(match.get("value"), bool) and key.startswith(f"{ATTRIBUTES_FIELD}."):
            flag = "true" if match["value"] else "false"
            key = BOOL_SHADOW_FIELD + key[len(ATTRIBUTES_FIELD) :]
            return qe.FieldCondition(key, match=qe.MatchValue(flag))
        if "value" in match:
            return qe.FieldCondition(key, match=qe.MatchValue(match["value"]))
        if "any" in match:
            return qe.FieldCondition(key, match=qe.MatchAny(list(match["any"])))
        if "except" in match:
            return qe.FieldCondition(key, match=qe.MatchExcept(list(match["except"])))
    if "range" in spec:
        bounds = spec["range"]
        if any(isinstance(v, str) for v in bounds.values()):
            return qe.FieldCondition(key, range=qe.RangeDateTime(**bounds))
        return qe.FieldCondition(
            key, range=qe.RangeFloat(**{k: float(v) for k, v in bounds.items()})
        )
    raise ValueError(f"Unsupported filter condition: {spec!r}")


def _edge_request(query: EngineQuery, scope: qe.Filter) -> qe.QueryRequest:
    vector = query.vector
    return qe.QueryRequest(
        limit=query.limit,
        query=qe.Query.Nearest(
            _to_sparse(vector) if isinstance(vector, lexical.Sparse) else vector,
            using=query.using,
        ),
        filter=scope if query.scoped else None,
        with_vector=[LEXICAL_VECTOR] if query.probe else None,
        with_payload=query.with_payload,
    )


def _scored(points: Sequence[Any], *, with_lexical: bool = False) -> list[ScoredChunk]:
    out: list[ScoredChunk] = []
    for p in points:
        sparse = None
        if with_lexical and isinstance(p.vector, dict):
            vector = p.vector.get(LEXICAL_VECTOR)
            if vector is not None:
                sparse = lexical.Sparse(list(vector.indices), list(vector.values))
        out.append(ScoredChunk(str(p.id), p.score, p.payload, sparse))
    return out


class EdgeIndex(PlannedSearch):
    """Async, coroutine-safe; one per process (and one process per folder: the lock)."""

    is_local = True

    def __init__(self, path: str | Path, *, dense_dim: int | None = None) -> None:
        if dense_dim is not None and dense_dim <= 0:
            raise ValueError("dense_dim must be positive.")
        self.path = Path(path)
        self.dense_dim = dense_dim
        self._lock_fd: int | None = None
        self._shard: Any = None
        self._closed = False
        self._state = threading.Lock()
        self._written = 0  # points written since the last optimise
        self._last_write = 0.0
        self._flushed = True
        self._unflushed = 0  # points written since the last flush
        self._maintaining = False
        self._open()

    # -- opening ----------------------------------------------------------------------

    def _open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise IndexLocked(
                f"The embedded vector index at {self.path} is open in another process; it "
                "allows one. Stop that process, or run several against a Qdrant server "
                "(QDRANT_URL)."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        try:
            if (self.path / CONFIG_FILE).exists():
                self._shard = self._load()
                self._check_existing()
            else:
                self._shard = self._create()
        except BaseException:
            self._release_lock()
            raise

    def _config(self) -> qe.EdgeConfig:
        dense = (
            {DENSE_VECTOR: qe.EdgeVectorParams(size=self.dense_dim, distance=qe.Distance.Cosine)}
            if self.dense_dim
            else None
        )
        return qe.EdgeConfig(
            vectors=dense,
            sparse_vectors={LEXICAL_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            payload_memory=qe.Memory.Cold,  # chunk text stays on disk (mmap), not in RAM
            optimizers=qe.EdgeOptimizersConfig(max_segment_size=MAX_SEGMENT_KB),
        )

    def _load(self) -> Any:
        """Open the shard; one made before MAX_SEGMENT_KB was pinned gets it (the rest of its
        configuration is kept)."""
        import json

        stored = json.loads((self.path / CONFIG_FILE).read_text())
        optimizers = stored.get("optimizers") or {}
        if LEXICAL_VECTOR not in (stored.get("sparse_vectors") or {}):
            return qe.EdgeShard.load(str(self.path))  # (refused by `_check_existing`)
        if optimizers.get("max_segment_size") == MAX_SEGMENT_KB:
            return qe.EdgeShard.load(str(self.path))
        pinned = qe.EdgeConfig(
            sparse_vectors={LEXICAL_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            optimizers=qe.EdgeOptimizersConfig(max_segment_size=MAX_SEGMENT_KB),
        )
        return qe.EdgeShard.load(str(self.path), pinned)

    def _create(self) -> Any:
        shard = qe.EdgeShard.create(str(self.path), self._config())
        shard.update(
            qe.UpdateOperation.create_field_index(
                "vector_store_id", qe.KeywordIndexParams(is_tenant=True)
            )
        )
        shard.update(qe.UpdateOperation.create_field_index("file_id", qe.PayloadSchemaType.Keyword))
        return shard

    def _check_existing(self) -> None:
        """A shard made without dense vectors gains them when an embedding model is set;
        one whose dense size differs from the model's cannot be used."""
        import json

        stored = json.loads((self.path / CONFIG_FILE).read_text())
        vectors = stored.get("vectors") or {}
        if LEXICAL_VECTOR not in (stored.get("sparse_vectors") or {}):
            raise RuntimeError(
                f"The index at {self.path} has no {LEXICAL_VECTOR!r} sparse vector; it was not "
                "created by opengrove."
            )
        if self.dense_dim is None:
            return
        existing = vectors.get(DENSE_VECTOR)
        if existing is None:
            self._shard.update(
                qe.UpdateOperation.create_dense_vector(
                    DENSE_VECTOR, self.dense_dim, qe.Distance.Cosine
                )
            )
            return
        if int(existing.get("size", 0)) != self.dense_dim:
            raise RuntimeError(
                f"The index at {self.path} holds dense vectors of dimension {existing['size']}, "
                f"but the embedding model produces {self.dense_dim}; move the folder away to "
                "re-index, or use the model it was built with."
            )

    async def ensure_collection(self) -> None:
        if self._closed:
            raise RuntimeError("The index is closed.")

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        shard, self._shard = self._shard, None

        def close() -> None:
            try:
                shard.flush()
                shard.close()
            finally:
                self._release_lock()

        await asyncio.to_thread(close)

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._shard is None:
            raise RuntimeError("The index is closed.")
        return await asyncio.to_thread(fn, *args)

    def _wrote(self, points: int) -> None:
        with self._state:
            self._written += points
            self._last_write = time.monotonic()
            self._flushed = False

    # -- writes -----------------------------------------------------------------------

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
        attrs = dict(attributes or {})
        shard = self._shard

        def write() -> int:
            if replace:
                shard.update(
                    qe.UpdateOperation.delete_points_by_filter(
                        to_edge_filter(scope_filter(vector_store_id, file_id))
                    )
                )
            points = []
            for i, chunk in enumerate(chunks):
                vector: dict[str, Any] = {}
                sparse = lexical.chunk_vector(chunk)
                if sparse is not None:
                    vector[LEXICAL_VECTOR] = _to_sparse(sparse)
                if dense_vectors is not None:
                    vector[DENSE_VECTOR] = [float(x) for x in dense_vectors[i]]
                points.append(
                    qe.Point(
                        point_id(vector_store_id, file_id, chunk.index),
                        vector,
                        chunk_payload(vector_store_id, file_id, filename, chunk, attrs),
                    )
                )
            for start in range(0, len(points), _UPSERT_BATCH):
                shard.update(
                    qe.UpdateOperation.upsert_points(points[start : start + _UPSERT_BATCH])
                )
            with self._state:
                self._unflushed += len(points)
                flush = self._unflushed >= FLUSH_EVERY_POINTS
                if flush:
                    self._unflushed = 0
            if flush:
                shard.flush()
                release_resident_pages(self.path)
            return len(points)

        written = await self._run(write)
        self._wrote(written)
        return written

    async def update_attributes(
        self, vector_store_id: str, file_id: str, attributes: Mapping[str, AttributeValue]
    ) -> None:
        # set_payload replaces the `attributes` object whole (no merge of its keys).
        operation = qe.UpdateOperation.set_payload_by_filter(
            to_edge_filter(scope_filter(vector_store_id, file_id)), attribute_payload(attributes)
        )
        await self._run(self._shard.update, operation)
        self._wrote(0)

    async def delete_file(self, vector_store_id: str | None, file_id: str) -> None:
        await self._delete(scope_filter(vector_store_id, file_id))

    async def delete_store(self, vector_store_id: str) -> None:
        await self._delete(scope_filter(vector_store_id))

    async def _delete(self, selection: QdrantFilter) -> None:
        operation = qe.UpdateOperation.delete_points_by_filter(to_edge_filter(selection))
        await self._run(self._shard.update, operation)
        self._wrote(0)

    # -- reads ------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._run(self._shard.info)

    async def count_chunks(self, vector_store_id: str, file_id: str | None = None) -> int:
        request = qe.CountRequest(
            exact=True, filter=to_edge_filter(scope_filter(vector_store_id, file_id))
        )
        return int(await self._run(self._shard.count, request))

    async def store_ids(self) -> set[str]:
        return await self._facet("vector_store_id", None)

    async def file_ids(self, vector_store_id: str) -> set[str]:
        return await self._facet("file_id", scope_filter(vector_store_id))

    async def _facet(self, key: str, selection: QdrantFilter | None) -> set[str]:
        request = qe.FacetRequest(
            key,
            limit=_FACET_LIMIT,
            exact=True,
            filter=to_edge_filter(selection) if selection else None,
        )
        response = await self._run(self._shard.facet, request)
        return {str(hit.value) for hit in response.hits if hit.count > 0}

    async def run_queries(
        self, queries: Sequence[EngineQuery], scope: QdrantFilter
    ) -> list[list[ScoredChunk]]:
        edge_scope = to_edge_filter(scope)
        batch = qe.QueryBatchRequest([_edge_request(q, edge_scope) for q in queries])
        answers = await self._run(self._shard.query_batch, batch)
        return [
            _scored(points, with_lexical=q.probe)
            for q, points in zip(queries, answers, strict=True)
        ]

    async def payloads(self, point_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        records = await self._run(self._shard.retrieve, list(point_ids), True, False)
        return {str(record.id): record.payload or {} for record in records}

    # -- upkeep -----------------------------------------------------------------------

    async def maintain(self) -> None:
        """Flush writes older than FLUSH_AFTER_SECONDS; optimise after many writes once
        writes paused, or after very many even while they go on. Never two at once."""
        if self._shard is None or self._maintaining:
            return
        now = time.monotonic()
        with self._state:
            idle = now - self._last_write
            flush = not self._flushed and idle >= min(FLUSH_AFTER_SECONDS, OPTIMIZE_IDLE_SECONDS)
            optimize = (
                self._written >= OPTIMIZE_AFTER_POINTS and idle >= OPTIMIZE_IDLE_SECONDS
            ) or self._written >= OPTIMIZE_WHILE_WRITING_POINTS
        if not (flush or optimize):
            return
        self._maintaining = True
        try:
            if optimize:
                started = time.monotonic()
                with self._state:
                    self._written = 0
                await self._run(self._shard.optimize)
                logger.info("vector index optimised in %.1f s", time.monotonic() - started)
                # (flush() below lets go of the pages the optimiser read and wrote)
            await self.flush()
        finally:
            self._maintaining = False

    async def flush(self) -> None:
        with self._state:
            self._flushed = True
        await self._run(self._flush)

    def _flush(self) -> None:
        self._shard.flush()
        release_resident_pages(self.path)

    async def optimize(self) -> None:
        with self._state:
            self._written = 0
        await self._run(self._shard.optimize)
        await self._run(release_resident_pages, self.path)
