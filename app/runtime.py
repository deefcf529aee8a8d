"""What a process needs at run time, built once at start and handed to everything else:
database, event hub, run dispatcher, model router, vector index, tools, run worker.

Shared by `serve` (API, with workers in-process by default) and `worker` (no API). Routers
reach these parts through the typed dependencies in `app.deps`.
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sqlalchemy import select

from app.auth.keys import KeyRing, adopt_bootstrap_key
from app.auth.quotas import OpenStreams
from app.auth.ratelimit import RateLimiter
from app.config import Settings
from app.db import Database
from app.ids import now
from app.image_urls import ImageUrlPolicy
from app.llm import adapter
from app.llm.images import ImageFetcher
from app.llm.routing import ModelRouter
from app.migrate import upgrade_database
from app.retrieval.embeddings import Embedder, drain_litellm_logging
from app.retrieval.index import LazyIndex, create_index
from app.runs.compaction import LogCompactor
from app.runs.delivery import LogWatcher, PostgresListener
from app.runs.dispatch import RunDispatcher
from app.runs.events import EventHub
from app.runs.execution import ExecutionContext
from app.runs.images import PromptImages
from app.runs.retention import prune_event_logs
from app.runs.service import RunSignals
from app.runs.worker import RunWorker
from app.sandbox import KernelPool, create_sandbox
from app.threads.models import Thread
from app.tools import builtin_tools
from app.vector_stores.ingestion import IngestionWorker, cleanup_expired, create_embedder

logger = logging.getLogger("opengrove")
HOUSEKEEPING_SECONDS = 60.0


@dataclass
class Runtime:
    settings: Settings
    db: Database
    hub: EventHub = field(default_factory=EventHub)
    dispatcher: RunDispatcher = field(default_factory=RunDispatcher)
    router: ModelRouter = field(default_factory=ModelRouter)
    worker: RunWorker | None = None
    listener: PostgresListener | None = None
    watcher: LogWatcher | None = None  # reads the event log for this process's streams
    compactor: LogCompactor | None = None  # ended runs' logs, one row each
    index: LazyIndex | None = None
    embedder: Embedder | None = None
    ingestion: IngestionWorker | None = None
    keyring: KeyRing = field(init=False)
    streams: OpenStreams = field(default_factory=OpenStreams)  # per-project stream quota
    rate_limiter: Any = None  # app.auth.ratelimit.RateLimiter
    sandbox: KernelPool | None = None  # code_interpreter's kernels (app.sandbox)
    image_urls: ImageUrlPolicy = field(default_factory=ImageUrlPolicy)
    image_fetcher: ImageFetcher | None = None  # downloads image_url URLs for run workers
    started_at: int = field(default_factory=now)  # unix seconds; /v1/models' `created`
    _housekeeping: asyncio.Task[None] | None = None
    _preload: asyncio.Task[object] | None = None

    @classmethod
    async def start(cls, settings: Settings, *, run_workers: bool) -> Runtime:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = settings.resolved_database_url
        if settings.run_migrations_on_start:
            await upgrade_database(url)
        runtime = cls(
            settings=settings,
            db=Database(url, settings.db_pool_size),
            router=ModelRouter.from_file(settings.model_config_file, settings.models),
            hub=EventHub(
                compaction=settings.event_compaction,
                send_timeout=settings.stream_send_timeout or None,
            ),
        )
        runtime.keyring = KeyRing(runtime.db, settings.key_cache_seconds)
        runtime.image_urls = ImageUrlPolicy(settings.image_url_hosts)
        runtime.rate_limiter = RateLimiter(runtime.db, settings)
        await adopt_bootstrap_key(runtime.db, settings)
        runtime.watcher = LogWatcher(runtime.db, runtime.hub)
        runtime.watcher.start()
        runtime.compactor = LogCompactor(runtime.db, runtime.hub)
        runtime.compactor.start()
        if not runtime.db.is_sqlite:
            # Cross-process wake-ups: new runs for workers, new events for streams.
            runtime.listener = PostgresListener(
                url, runtime.watcher.notify, runtime.dispatcher.queued
            )
            await runtime.listener.start()
        # Slow parts load in the background: the API answers while they do.
        runtime.index = create_index(settings)
        owns_index = settings.qdrant_url is not None or _own_embedded_index(settings)
        if owns_index:
            runtime.index.open_in_background()
        else:
            runtime.index.serve_elsewhere(
                "The embedded vector index is open in another server process. To use vector "
                "stores and file_search with --processes > 1, set QDRANT_URL (a Qdrant server)."
            )
        if settings.preload_llm:
            runtime._preload = asyncio.create_task(adapter.load(), name="preload-llm")
        runtime.embedder = create_embedder(settings)
        runtime.ingestion = IngestionWorker(runtime.db, runtime.index, settings, runtime.embedder)
        if owns_index:
            await runtime.ingestion.start()
        if run_workers:
            if settings.image_urls == "inline":
                runtime.image_fetcher = ImageFetcher(
                    runtime.image_urls,
                    max_bytes=settings.image_fetch_max_bytes,
                    timeout=settings.image_fetch_timeout,
                )
            context = ExecutionContext(
                db=runtime.db,
                hub=runtime.hub,
                router=runtime.router,
                tools=builtin_tools(
                    runtime.index,
                    runtime.embedder,
                    runtime._start_sandbox(),
                    runtime.db,
                    settings.files_dir,
                ),
                policy=adapter.RetryPolicy(
                    attempts=settings.llm_attempts,
                    base_delay=settings.llm_retry_base_delay,
                    timeout=settings.llm_timeout,
                    fast_path=settings.llm_fast_path,
                ),
                max_run_steps=settings.max_run_steps,
                expiry_seconds=settings.run_expiry_seconds,
                images=PromptImages(
                    runtime.db,
                    settings.files_dir,
                    runtime.image_fetcher,
                    settings.image_fetch_max_bytes,
                ),
                on_usage=runtime.rate_limiter.note_tokens,
            )
            runtime.worker = RunWorker(
                runtime.db,
                runtime.dispatcher,
                context,
                concurrency=settings.worker_concurrency,
                lease_seconds=settings.run_lease_seconds,
            )
            await runtime.worker.start()
        runtime._housekeeping = asyncio.create_task(runtime._housekeep(), name="housekeeping")
        logger.info(
            "opengrove ready: database=%s, workers=%s",
            _redact(url),
            "in-process" if run_workers else "external",
        )
        return runtime

    def _start_sandbox(self) -> KernelPool | None:
        """code_interpreter's kernels (where runs execute); probed in the background."""

        async def threads_gone(thread_ids: list[str]) -> set[str]:
            async with self.db.sessionmaker() as session:
                found = await session.scalars(select(Thread.id).where(Thread.id.in_(thread_ids)))
                return set(thread_ids) - set(found)

        self.sandbox = create_sandbox(self.settings, threads_gone)
        return self.sandbox

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            await self.housekeep_once()

    async def housekeep_once(self) -> None:
        """Expire vector stores and files past their `expires_after`; delete the event logs
        of runs that ended longer ago than OPENGROVE_EVENT_RETENTION_SECONDS (every process
        may)."""
        assert self.index is not None
        try:
            done = await cleanup_expired(self.db, self.index, self.settings)
            if any(done.values()):
                logger.info("housekeeping: %s", done)
        except Exception:
            logger.exception("housekeeping failed")
        if self.settings.event_retention_seconds:
            try:
                pruned = await prune_event_logs(self.db, self.settings.event_retention_seconds)
                if pruned:
                    logger.info("housekeeping: %d event log rows pruned", pruned)
            except Exception:
                logger.exception("pruning event logs failed")

    @cached_property
    def signals(self) -> RunSignals:
        # Built once, not per request: every run request asks for it.
        return RunSignals(self.hub, self.dispatcher, self.settings.run_expiry_seconds)

    async def health(self) -> tuple[bool, dict[str, str]]:
        """(healthy, checks) for /health; a part still loading reports "starting"."""
        checks: dict[str, str] = {}
        try:
            await self.db.ping()
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {exc.__class__.__name__}"
        assert self.index is not None
        if self.index.elsewhere is not None:
            checks["vector_index"] = "in another process"
        elif not self.index.is_open:
            opening = self.index.opening_error()
            checks["vector_index"] = f"error: {opening}" if opening else "starting"
        else:
            try:
                await self.index.ping()
                checks["vector_index"] = "ok"
            except Exception as exc:
                checks["vector_index"] = f"error: {exc.__class__.__name__}"
        if self.sandbox is not None:
            # Not an error when off (the tool is then not offered); "starting" while a test
            # kernel imports its libraries, a few seconds of CPU beside the first requests.
            checks["code_interpreter"] = self.sandbox.status()
        if adapter.is_loaded():
            checks["llm"] = "loaded"
        else:
            checks["llm"] = "starting" if self._preload is not None else "loads on first run"
        healthy = not any(value.startswith("error") for value in checks.values())
        starting = any(value == "starting" for value in checks.values())
        checks = {
            "status": "starting" if healthy and starting else "ok" if healthy else "unavailable",
            **checks,
        }
        return healthy, checks

    def settle_heap(self) -> None:
        """Take what start made out of the collector's full passes, and what litellm's
        import makes once it is loaded (at start with OPENGROVE_PRELOAD_LLM, else on the
        first run). For a process's own server or worker only: the collector is the
        process's."""
        freeze_heap()
        adapter.after_import(freeze_heap)

    async def stop(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self._preload is not None:
            self._preload.cancel()
        if self.worker is not None:
            await self.worker.stop()
            # litellm's logging task must be idle before the loop closes (see the function).
            await drain_litellm_logging()
            await adapter.aclose()  # the LLM fast path's shared HTTP connections
        if self.image_fetcher is not None:
            await self.image_fetcher.aclose()
        if self.sandbox is not None:
            await self.sandbox.close()  # every kernel, and this process's workspaces
        if self.ingestion is not None:
            await self.ingestion.stop()
        if self.index is not None:
            await self.index.close()
        if self.compactor is not None:
            await self.compactor.stop()  # what the workers ended last
        if self.listener is not None:
            await self.listener.stop()
        if self.watcher is not None:
            await self.watcher.stop()
        if self.rate_limiter is not None:
            await self.rate_limiter.close()
        await self.db.dispose()


_index_lock: int | None = None


def freeze_heap() -> None:
    """Move every object alive now to the collector's permanent generation. Unfrozen, a full
    pass over this heap took ~110 ms every few thousand requests (measured on the CRUD path):
    a pause of every request in flight, and their p99. Objects made later are collected as
    before (the default thresholds: higher ones held more garbage, RSS grew twice as fast in
    the soak); a second call freezes what was made in between (litellm's import)."""
    gc.collect()  # garbage frozen now would stay for good
    gc.freeze()


def _own_embedded_index(settings: Settings) -> bool:
    """With several processes on one data dir, one opens the embedded index (it allows one):
    whichever takes this lock first; it holds it for its lifetime."""
    global _index_lock
    if settings.processes <= 1:
        return True
    if _index_lock is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(settings.data_dir / "index.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        _index_lock = fd
    return True


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
