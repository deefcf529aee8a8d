"""What a process needs at run time: database, event hub, model router, run executor.

Shared by `serve` (API, with workers in-process by default) and `worker` (no API).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from app.config import Settings
from app.db import Database
from app.llm.routing import ModelRouter
from app.migrate import upgrade_database
from app.retrieval.embeddings import Embedder, drain_litellm_logging
from app.retrieval.index import VectorIndex
from app.runs.events import EventHub, PostgresListener
from app.runs.executor import RunExecutor
from app.vector_stores.ingestion import (
    IngestionWorker,
    cleanup_expired,
    create_embedder,
    create_index,
)

logger = logging.getLogger("opengrove")
HOUSEKEEPING_SECONDS = 60.0


@dataclass
class Runtime:
    settings: Settings
    db: Database
    hub: EventHub = field(default_factory=EventHub)
    router: ModelRouter = field(default_factory=ModelRouter)
    executor: RunExecutor | None = None
    listener: PostgresListener | None = None
    index: VectorIndex | None = None
    embedder: Embedder | None = None
    ingestion: IngestionWorker | None = None
    _housekeeping: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, settings: Settings, *, run_workers: bool) -> Runtime:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = settings.resolved_database_url
        if settings.run_migrations_on_start:
            await upgrade_database(url)
        runtime = cls(
            settings=settings,
            db=Database(url, settings.db_pool_size),
            router=ModelRouter.from_file(settings.model_config_file),
        )
        if not runtime.db.is_sqlite:
            # Cross-process wake-ups: new runs for workers, new events for streams.
            runtime.listener = PostgresListener(url, runtime.hub)
            await runtime.listener.start()
        runtime.index = create_index(settings)
        runtime.embedder = create_embedder(settings)
        runtime.ingestion = IngestionWorker(runtime.db, runtime.index, settings, runtime.embedder)
        await runtime.ingestion.start()
        if run_workers:
            runtime.executor = RunExecutor(
                runtime.db, runtime.hub, settings, runtime.router, runtime.index, runtime.embedder
            )
            await runtime.executor.start()
        runtime._housekeeping = asyncio.create_task(runtime._housekeep(), name="housekeeping")
        logger.info(
            "opengrove ready: database=%s, workers=%s",
            _redact(url),
            "in-process" if run_workers else "external",
        )
        return runtime

    async def _housekeep(self) -> None:
        """Expire vector stores and files past their `expires_after` (every process may)."""
        assert self.index is not None
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                done = await cleanup_expired(self.db, self.index, self.settings)
                if any(done.values()):
                    logger.info("housekeeping: %s", done)
            except Exception:
                logger.exception("housekeeping failed")

    async def stop(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self.executor is not None:
            await self.executor.stop()
            # litellm's logging task must be idle before the loop closes (see the function).
            await drain_litellm_logging()
        if self.ingestion is not None:
            await self.ingestion.stop()
        if self.index is not None:
            await self.index.close()
        if self.listener is not None:
            await self.listener.stop()
        await self.db.dispose()


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
