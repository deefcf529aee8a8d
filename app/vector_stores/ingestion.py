"""Background ingestion of vector store files: parse → chunk → (embed) → Qdrant.

The queue is the database: a vector-store file is work while its status is
`in_progress`. A worker claims files with a lease (owner + expiry) and renews it while
it works; a file whose worker died (lease lapsed) or was stopped (lease released on
shutdown) is claimed again by any worker, so a restarted server picks up whatever was
left `in_progress`. A file that keeps killing its worker fails after MAX_ATTEMPTS. While
files go quickly, a worker leases a batch ahead of its free slots (CLAIM_AHEAD): a claim
ranks every waiting file, too much to do per small file.

Every outcome is written with a conditional UPDATE on (status, ingest token, lease),
so cancelling a batch, detaching or re-attaching a file, or deleting the store while
a worker is busy wins over the worker's late result, and the worker then removes
whatever chunks it wrote. One file failing never touches the others.

`wait_for_ingestion` lets a search wait (a while) for files still in the queue.

Settings read here: embedding_model, embedding_api_base, embedding_api_key,
ingestion_concurrency, ingestion_lease_seconds, ingestion_processes, files_dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import Database
from app.files.models import StoredFile
from app.files.service import delete_expired_files, file_path
from app.ids import new_id
from app.observability.metrics import count_ingested
from app.retrieval.chunking import Chunk
from app.retrieval.embeddings import Embedder, EmbeddingError, drain_litellm_logging
from app.retrieval.index import VectorIndex
from app.retrieval.page_pool import AsyncPageReader, FileToChunk, PagePool, ReaderLost
from app.retrieval.parsing import InvalidFileError, Limits, UnsupportedFileError
from app.tasks import cancel_all
from app.vector_stores.models import VectorStore, VectorStoreFile
from app.vector_stores.service import expire_vector_stores

logger = logging.getLogger("opengrove.ingestion")

MAX_ATTEMPTS = 3
POLL_SECONDS = 1.0
# While files take under QUICK_FILE_SECONDS each (small files), a process leases up to
# CLAIM_AHEAD x concurrency files beyond those it ingests, and claims again only once those
# have started: a claim (which ranks every waiting file) per batch of files instead of per
# file. Another project's file then waits for at most that many quick files more.
CLAIM_AHEAD = 2
QUICK_FILE_SECONDS = 0.5
STILL_MINE_CHECK_SECONDS = 5.0
UPKEEP_SECONDS = 10.0
RECONCILE_SECONDS = 3600.0  # a long file re-checks it was not cancelled this often
POOL_IDLE_SECONDS = 60.0  # worker processes idle this long exit (restarted when needed)


def create_embedder(settings: Settings) -> Embedder | None:
    """An Embedder for the configured embedding model, or None (lexical search only)."""
    if not settings.embedding_model:
        return None
    # `dimensions` is not sent: only OpenAI's text-embedding-3 models accept it (litellm
    # rejects it for the rest), so embedding_dimensions must be the model's output size.
    return Embedder(
        settings.embedding_model,
        api_base=settings.embedding_api_base,
        api_key=settings.embedding_api_key,
    )


async def cleanup_expired(db: Database, index: VectorIndex, settings: Settings) -> dict[str, int]:
    """Periodic maintenance: mark expired vector stores, purge those expired longer than the
    grace period (rows and chunks), delete expired files."""
    return {
        "vector_stores_expired": await expire_vector_stores(db),
        "vector_stores_purged": await purge_expired_stores(
            db, index, settings.expired_store_grace_days * 86_400
        ),
        "files_deleted": await delete_expired_files(db, index, settings.files_dir),
    }


async def purge_expired_stores(db: Database, index: VectorIndex, grace_seconds: float) -> int:
    """Delete stores expired more than `grace_seconds` ago: their rows (files and batches go
    by cascade) and then their chunks. A failed chunk delete is retried by the index and,
    after a crash, removed by `reconcile`."""
    cutoff = time.time() - grace_seconds
    async with db.sessionmaker() as session:
        store_ids = list(
            await session.scalars(
                delete(VectorStore)
                .where(
                    VectorStore.expired.is_(True),
                    VectorStore.expires_at.is_not(None),
                    VectorStore.expires_at < cutoff,
                )
                .returning(VectorStore.id)
                .execution_options(synchronize_session=False)
            )
        )
        await session.commit()
    for store_id in store_ids:
        try:
            await index.delete_store(store_id)
        except Exception:
            logger.warning("removing chunks of purged store %s failed", store_id, exc_info=True)
    if store_ids:
        logger.info("purged %d expired vector store(s)", len(store_ids))
    return len(store_ids)


async def reconcile(db: Database, index: VectorIndex) -> dict[str, int]:
    """Remove chunks whose store or store file no longer exists (a delete that failed, or a
    crash between the database commit and the index delete). Run at start by the process
    that owns the index, then now and then. Each orphan is re-checked right before its
    delete, so a file attached meanwhile keeps its chunks."""
    removed = {"stores": 0, "files": 0}
    indexed = await index.store_ids()
    if not indexed:
        return removed
    live_statuses = ("completed", "in_progress")
    for store_id in sorted(indexed):
        async with db.sessionmaker() as session:
            exists = await session.get(VectorStore, store_id) is not None
        if not exists:
            await index.delete_store(store_id)
            removed["stores"] += 1
            continue
        files = await index.file_ids(store_id)
        async with db.sessionmaker() as session:
            live = set(
                await session.scalars(
                    select(VectorStoreFile.id).where(
                        VectorStoreFile.vector_store_id == store_id,
                        VectorStoreFile.id.in_(files),
                        VectorStoreFile.status.in_(live_statuses),
                    )
                )
            )
        for file_id in sorted(files - live):
            async with db.sessionmaker() as session:
                again = await session.scalar(
                    select(func.count())
                    .select_from(VectorStoreFile)
                    .where(
                        VectorStoreFile.vector_store_id == store_id,
                        VectorStoreFile.id == file_id,
                        VectorStoreFile.status.in_(live_statuses),
                    )
                )
            if not again:
                await index.delete_file(store_id, file_id)
                removed["files"] += 1
    if any(removed.values()):
        logger.info("reconciled the vector index with the database: removed %s", removed)
    return removed


async def wait_for_ingestion(
    session: AsyncSession, vector_store_ids: list[str], patience: float
) -> None:
    """Let files still being ingested into these stores finish before a search reads them
    (for at most `patience` seconds; then search what is there)."""
    deadline = time.monotonic() + patience
    while vector_store_ids and time.monotonic() < deadline:
        pending = await session.scalar(
            select(func.count())
            .select_from(VectorStoreFile)
            .where(
                VectorStoreFile.vector_store_id.in_(vector_store_ids),
                VectorStoreFile.status == "in_progress",
            )
        )
        await session.commit()  # end the read transaction so the next poll sees new rows
        if not pending:
            return
        await asyncio.sleep(0.2)


class FileFailure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class _Job:
    key: str
    vector_store_id: str
    file_id: str
    token: str
    attempts: int
    chunking_strategy: dict[str, Any] | None = None
    attributes: dict[str, Any] | None = None


class IngestionWorker:
    """Claims `in_progress` vector-store files and processes them, a few at a time."""

    def __init__(
        self,
        db: Database,
        index: VectorIndex,
        settings: Settings,
        embedder: Embedder | None = None,
    ) -> None:
        self.db = db
        self.index = index
        self.embedder = embedder
        self.files_dir: Path = settings.files_dir
        self.concurrency = settings.ingestion_concurrency
        self.lease_seconds = settings.ingestion_lease_seconds
        self.max_text_chars = settings.ingestion_max_text_bytes
        self.parse_timeout = settings.ingestion_parse_timeout
        self.worker_id = new_id("ing_")
        # Parsing, chunking and BM25 encoding run in these worker processes (0: threads).
        self.pages = PagePool(settings.ingestion_processes)
        self._last_busy = time.monotonic()
        self._tasks: dict[str, asyncio.Task[None]] = {}  # files leased (ingesting or next)
        self._slots = asyncio.Semaphore(max(self.concurrency, 1))  # files ingesting
        self._file_seconds = QUICK_FILE_SECONDS  # a moving average of files' durations
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="ingestion-claim"),
            asyncio.create_task(self._renew_loop(), name="ingestion-lease"),
            asyncio.create_task(self._upkeep_loop(), name="index-upkeep"),
        ]
        logger.info(
            "ingestion worker %s started (concurrency %d)", self.worker_id, self.concurrency
        )

    async def stop(self) -> None:
        await cancel_all([*self._loops, *self._tasks.values()])
        self.pages.shutdown()
        if self.embedder is not None:
            await drain_litellm_logging()
        # Hand unfinished files straight back to the queue instead of waiting for the lease.
        try:
            async with self.db.sessionmaker() as session:
                await session.execute(
                    update(VectorStoreFile)
                    .where(VectorStoreFile.lease_owner == self.worker_id)
                    .values(
                        lease_owner=None,
                        lease_expires_at=None,
                        attempts=VectorStoreFile.attempts - 1,
                    )
                    .execution_options(synchronize_session=False)
                )
                await session.commit()
        except Exception:
            logger.exception("releasing ingestion leases failed")

    async def _upkeep_loop(self) -> None:
        """The index's upkeep, in the process that owns it: reconcile with the database at
        start and every RECONCILE_SECONDS; flush, optimise and retry failed deletes every
        UPKEEP_SECONDS (`VectorIndex.maintain`)."""
        next_reconcile = 0.0
        while True:
            try:
                if time.monotonic() >= next_reconcile:
                    next_reconcile = time.monotonic() + RECONCILE_SECONDS
                    await reconcile(self.db, self.index)
                await self.index.maintain()
                if not self._tasks and time.monotonic() - self._last_busy > POOL_IDLE_SECONDS:
                    self.pages.shutdown()  # ~100 MB per worker process, back when idle
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("vector index upkeep failed")
            await asyncio.sleep(UPKEEP_SECONDS)

    def wake(self) -> None:
        """New work was queued in this process: claim now rather than at the next poll."""
        self._wake.set()

    # ---- claiming --------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                jobs = await self.claim(self._claimable()) if self._claimable() > 0 else []
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("claiming files to ingest failed")
                jobs = []
            for job in jobs:
                self._tasks[job.key] = asyncio.create_task(self._run(job), name=job.key)
            if jobs:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=POLL_SECONDS)
            except TimeoutError:
                pass

    def _claimable(self) -> int:
        """How many files to lease now: up to `concurrency` leased; while files are quick,
        CLAIM_AHEAD times as many more, claimed once the ones leased ahead have started."""
        leased = len(self._tasks)
        if self._file_seconds >= QUICK_FILE_SECONDS:
            return self.concurrency - leased
        if leased > self.concurrency:  # some leased files still wait for a slot
            return 0
        return self.concurrency * (1 + CLAIM_AHEAD) - leased

    async def claim(self, limit: int) -> list[_Job]:
        """Lease up to `limit` unleased (or lease-expired) in-progress files, fair across
        projects: the project with the fewest files being ingested goes first (its k-th
        waiting file ranks as `ingesting + k`, ties by age), so one project's 2,000-file
        batch does not hold back another's upload."""
        stamp = time.time()
        waiting = and_(
            VectorStoreFile.status == "in_progress",
            or_(
                VectorStoreFile.lease_owner.is_(None),
                VectorStoreFile.lease_expires_at < stamp,
            ),
            # A file re-attached while this process still works on it waits for
            # that (now stale) job to end: one job per file per process.
            VectorStoreFile.key.not_in(list(self._tasks)),
        )
        ingesting = (
            select(VectorStore.project_id, func.count().label("files"))
            .join(VectorStoreFile, VectorStore.id == VectorStoreFile.vector_store_id)
            .where(
                VectorStoreFile.status == "in_progress",
                VectorStoreFile.lease_owner.is_not(None),
                VectorStoreFile.lease_expires_at >= stamp,
            )
            .group_by(VectorStore.project_id)
            .subquery()
        )
        turn = func.row_number().over(
            partition_by=VectorStore.project_id, order_by=VectorStoreFile.seq
        ) + func.coalesce(ingesting.c.files, 0)
        ranked = (
            select(VectorStoreFile.key, VectorStoreFile.seq, turn.label("turn"))
            .join(VectorStore, VectorStore.id == VectorStoreFile.vector_store_id)
            .outerjoin(ingesting, ingesting.c.project_id == VectorStore.project_id)
            .where(waiting)
            .subquery()
        )
        chosen = select(ranked.c.key).order_by(ranked.c.turn, ranked.c.seq).limit(limit)
        # `waiting` again outside: PostgreSQL re-checks it on rows leased meanwhile.
        candidates = select(VectorStoreFile.key).where(VectorStoreFile.key.in_(chosen), waiting)
        values = {
            "lease_owner": self.worker_id,
            "lease_expires_at": stamp + self.lease_seconds,
            "attempts": VectorStoreFile.attempts + 1,
        }
        returning = [
            VectorStoreFile.key,
            VectorStoreFile.vector_store_id,
            VectorStoreFile.id,
            VectorStoreFile.ingest_token,
            VectorStoreFile.attempts,
            VectorStoreFile.chunking_strategy,
            VectorStoreFile.attributes,
        ]
        rows = await self.db.lease(VectorStoreFile.key, candidates, values, returning)
        jobs = [_Job(*row) for row in rows]
        return jobs

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            if not self._tasks:
                continue
            try:
                async with self.db.sessionmaker() as session:
                    await session.execute(
                        update(VectorStoreFile)
                        .where(
                            VectorStoreFile.lease_owner == self.worker_id,
                            VectorStoreFile.key.in_(list(self._tasks)),
                        )
                        .values(lease_expires_at=time.time() + self.lease_seconds)
                        .execution_options(synchronize_session=False)
                    )
                    await session.commit()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("renewing ingestion leases failed")

    # ---- processing ------------------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        try:
            async with self._slots:
                started = time.monotonic()
                await self.process(job)
                seconds = time.monotonic() - started
                self._file_seconds += (seconds - self._file_seconds) / 4
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("ingesting %s into %s crashed", job.file_id, job.vector_store_id)
        finally:
            self._tasks.pop(job.key, None)
            self._last_busy = time.monotonic()
            self._wake.set()

    async def process(self, job: _Job) -> None:
        """Parse, chunk, embed and write one file a page (`page_pool.PAGE_CHUNKS`) at a time, so
        memory stays bounded whatever the file's size; between pages other files get their
        turn (the event loop interleaves the files being ingested). The claim read the
        file's settings; one statement checks it is still this job's and reads the stored
        file's name."""
        mine, stored = await self.db.transact(
            _read_stored_file, job.key, job.token, self.worker_id, writes=False
        )
        if not mine:
            return
        if job.attempts > MAX_ATTEMPTS:
            await self._finish_failed(
                job,
                FileFailure(
                    "server_error",
                    f"Processing was interrupted {MAX_ATTEMPTS} times; giving up on this file.",
                ),
            )
            return
        written = usage = 0
        pages: _Pages | None = None
        ahead: asyncio.Future[list[Chunk] | None] | None = None
        try:
            if stored is None:
                raise FileFailure("invalid_file", "The file no longer exists.")
            static = (job.chunking_strategy or {}).get("static") or {}
            pages = _Pages(
                self.pages.reader(
                    FileToChunk(
                        file_path(self.files_dir, stored.id),
                        stored.filename,
                        stored.mime_type,
                        int(static.get("max_chunk_size_tokens", 800)),
                        int(static.get("chunk_overlap_tokens", 400)),
                        Limits(
                            max_chars=self.max_text_chars, max_unzipped_bytes=self.max_text_chars
                        ),
                    )
                )
            )
            check_at = time.monotonic() + STILL_MINE_CHECK_SECONDS
            # One page read ahead: the next page is parsed while this one is written.
            ahead = asyncio.ensure_future(self._next_page(pages, stored.filename))
            while (page := await pages.wait(ahead)) is not None:
                ahead = asyncio.ensure_future(self._next_page(pages, stored.filename))
                dense = await self._embed([chunk.text for chunk in page])
                await self.index.upsert_chunks(
                    job.vector_store_id,
                    job.file_id,
                    stored.filename,
                    page,
                    attributes=job.attributes or {},
                    dense_vectors=dense,
                    replace=written == 0,  # the first page drops the file's older chunks
                )
                written += len(page)
                usage += sum(len(chunk.text.encode()) for chunk in page)
                if time.monotonic() >= check_at:
                    check_at = time.monotonic() + STILL_MINE_CHECK_SECONDS
                    if not await self._still_leased(job):
                        await self._drop_if_abandoned(job, await self._current(job))
                        return
                await asyncio.sleep(0)  # a fair turn for the other files in progress
            if not written:
                raise FileFailure("invalid_file", f"File {stored.filename!r} has no text to index.")
        except FileFailure as failure:
            await self._finish_failed(job, failure)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("ingesting %s into %s failed", job.file_id, job.vector_store_id)
            await self._finish_failed(
                job, FileFailure("server_error", "The server had an error processing this file.")
            )
            return
        finally:
            if ahead is not None:  # an error or a lost lease left a page read ahead
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    await ahead
            if pages is not None:
                pages.reader.close()
        await self._finish_completed(job, written, usage)

    def _still_mine(self, row: VectorStoreFile, job: _Job) -> bool:
        return (
            row.status == "in_progress"
            and row.ingest_token == job.token
            and row.lease_owner == self.worker_id
        )

    async def _current(self, job: _Job) -> VectorStoreFile | None:
        async with self.db.sessionmaker() as session:
            return await session.get(VectorStoreFile, job.key)

    async def _still_leased(self, job: _Job) -> bool:
        row = await self._current(job)
        return row is not None and self._still_mine(row, job)

    async def _next_page(self, pages: _Pages, filename: str) -> list[Chunk] | None:
        """The next page of chunks (with their BM25 vectors), parsed in a worker process
        (`PagePool`) within what is left of the file's parse budget
        (OPENGROVE_INGESTION_PARSE_TIMEOUT); the parser stops itself at the deadline too."""
        started = time.monotonic()
        try:
            return await pages.reader.next(started + self.parse_timeout - pages.parse_seconds)
        except TimeoutError as exc:
            raise FileFailure(
                "invalid_file",
                f"Parsing {filename!r} took longer than {self.parse_timeout:g} seconds; gave up.",
            ) from exc
        except UnsupportedFileError as exc:
            raise FileFailure("unsupported_file", str(exc)) from exc
        except InvalidFileError as exc:
            raise FileFailure("invalid_file", str(exc)) from exc
        except FileNotFoundError as exc:
            raise FileFailure("server_error", "The file's stored content is missing.") from exc
        except ReaderLost as exc:
            raise FileFailure(
                "server_error", "Processing was interrupted (a parsing process stopped)."
            ) from exc

    async def _embed(self, texts: list[str]) -> list[list[float]] | None:
        if self.embedder is None or not self.index.dense_dim:
            return None
        try:
            vectors = await self.embedder.embed(texts)
        except EmbeddingError as exc:
            # The provider's text (request bodies, hosts, keys) goes to the log, not the API.
            logger.warning("embedding failed: %s", exc)
            raise FileFailure(
                "server_error", "Embedding the file failed: the embedding provider refused it."
            ) from exc
        if any(len(vector) != self.index.dense_dim for vector in vectors):
            raise FileFailure(
                "server_error",
                f"Embedding the file failed: the model returns {len(vectors[0])}-dimensional "
                f"vectors, but the index is configured for {self.index.dense_dim} "
                "(OPENGROVE_EMBEDDING_DIMENSIONS).",
            )
        return vectors

    async def _settle(self, job: _Job, **values: Any) -> tuple[bool, dict[str, Any] | None]:
        """Write the outcome if the file is still this job's (one statement, one trip):
        whether it was written, and the file's attributes then."""
        parameters = {
            "job_key": job.key,
            "job_token": job.token,
            "job_owner": self.worker_id,
            "lease_owner": None,
            "lease_expires_at": None,
            **values,
        }

        def settle(conn: Connection) -> tuple[bool, dict[str, Any] | None]:
            row = conn.execute(_SETTLE, parameters).first()
            return (False, None) if row is None else (True, row[0])

        return await self.db.transact(settle)

    async def _finish_completed(self, job: _Job, chunk_count: int, usage: int) -> None:
        written, attributes = await self._settle(
            job,
            status="completed",
            last_error=None,
            usage_bytes=usage,
            chunk_count=chunk_count,
        )
        if not written:
            await self._drop_if_abandoned(job, await self._current(job))
            return
        count_ingested("completed")
        if (attributes or {}) != (job.attributes or {}):
            # Attributes changed while we worked: the chunks carry the old ones.
            await self.index.update_attributes(job.vector_store_id, job.file_id, attributes or {})
        logger.info(
            "ingested %s into %s: %d chunk(s)", job.file_id, job.vector_store_id, chunk_count
        )

    async def _finish_failed(self, job: _Job, failure: FileFailure) -> None:
        logger.info(
            "ingesting %s into %s failed: %s %s",
            job.file_id,
            job.vector_store_id,
            failure.code,
            failure.message,
        )
        written, _ = await self._settle(
            job,
            status="failed",
            last_error={"code": failure.code, "message": failure.message[:1000]},
            usage_bytes=0,
            chunk_count=0,
        )
        if written:
            count_ingested("failed")
            await self.index.delete_file(job.vector_store_id, job.file_id)
        else:
            await self._drop_if_abandoned(job, await self._current(job))

    async def _drop_if_abandoned(self, job: _Job, current: VectorStoreFile | None) -> None:
        """The file was detached, cancelled or its store deleted while we worked: remove
        the chunks we may have written. (Re-attached: the newer job rewrites them.)"""
        if current is None or current.status == "cancelled":
            await self.index.delete_file(job.vector_store_id, job.file_id)


# Statements of every file, built once (building and keying an ORM statement costs more
# than SQLite running it); the SET columns of `_SETTLE` are the parameters given.
_files = VectorStoreFile.__table__.c
_SETTLE = (
    update(VectorStoreFile.__table__)
    .where(
        _files.key == bindparam("job_key"),
        _files.status == "in_progress",
        _files.ingest_token == bindparam("job_token"),
        _files.lease_owner == bindparam("job_owner"),
    )
    .returning(_files.attributes)
)
_stored = StoredFile.__table__.c
_READ_STORED = (
    select(_files.key, _stored.id, _stored.filename, _stored.mime_type)
    .select_from(VectorStoreFile.__table__)
    .outerjoin(StoredFile.__table__, _stored.id == _files.id)
    .where(
        _files.key == bindparam("job_key"),
        _files.status == "in_progress",
        _files.ingest_token == bindparam("job_token"),
        _files.lease_owner == bindparam("job_owner"),
    )
)


def _read_stored_file(conn: Connection, key: str, token: str, owner: str) -> tuple[bool, Any]:
    """Whether the file is still the job's (in progress, its token, leased by `owner`), and
    the stored file's id, name and type (None if it is gone)."""
    row = conn.execute(
        _READ_STORED, {"job_key": key, "job_token": token, "job_owner": owner}
    ).first()
    if row is None:
        return False, None
    return True, (None if row.id is None else row)


class _Pages:
    """A file's page reader, and its parse time so far: the time ingestion waited for its
    pages (a page read ahead while the previous one is written costs nothing)."""

    def __init__(self, reader: AsyncPageReader) -> None:
        self.reader = reader
        self.parse_seconds = 0.0

    async def wait(self, page: asyncio.Future[list[Chunk] | None]) -> list[Chunk] | None:
        started = time.monotonic()
        try:
            return await page
        finally:
            self.parse_seconds += time.monotonic() - started
