"""What /metrics answers: every instrument (of every server process, with `--processes`),
plus gauges read from the database at scrape time.

The database gauges describe shared state (the run queue, leases, ingestion), which any
process reads alike, so they are not kept per process: each scrape asks the database, with
a few indexed aggregates (runs by their (status, seq) index; vector store files by
status), and reports what it got. A scrape whose query fails still reports the rest.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Table, func, select

from app.db import Database, one_of
from app.observability.metrics import MULTIPROCESS_DIR
from app.runs.models import ACTIVE_STATUSES, Run
from app.vector_stores.models import VectorStoreFile

logger = logging.getLogger("opengrove.metrics")

RUNS: Table = Run.__table__  # type: ignore[assignment]
FILES: Table = VectorStoreFile.__table__  # type: ignore[assignment]
FILE_STATUSES = ("in_progress", "completed", "failed", "cancelled")
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db")


@dataclass(frozen=True)
class DatabaseState:
    runs: dict[str, int]  # active runs by status
    oldest_queued_seq: int | None  # a run's seq is its creation time in nanoseconds
    oldest_lease_expiry: float | None  # of in-progress runs, unix seconds
    files: dict[str, int]  # vector store files by status


def read_state(conn: Connection) -> DatabaseState:
    status = RUNS.c.status
    runs = conn.execute(
        select(status, func.count()).where(one_of(status, ACTIVE_STATUSES)).group_by(status)
    )
    oldest_queued = conn.execute(select(func.min(RUNS.c.seq)).where(status == "queued"))
    # A lease of 0 was handed back (shutdown) or lapsed (a dead process): reclaimed at once.
    oldest_lease = conn.execute(
        select(func.min(RUNS.c.lease_expires_at)).where(
            status == "in_progress", RUNS.c.lease_expires_at > 0
        )
    )
    files = conn.execute(select(FILES.c.status, func.count()).group_by(FILES.c.status))
    return DatabaseState(
        runs={name: int(count) for name, count in runs},
        oldest_queued_seq=oldest_queued.scalar(),
        oldest_lease_expiry=oldest_lease.scalar(),
        files={name: int(count) for name, count in files},
    )


class DatabaseGauges(Collector):
    """One scrape's database gauges."""

    def __init__(self, state: DatabaseState, lease_seconds: float) -> None:
        self.state = state
        self.lease_seconds = lease_seconds

    def collect(self) -> Iterator[Metric]:
        state, stamp = self.state, time.time()
        yield GaugeMetricFamily(
            "opengrove_run_queue_depth",
            "Runs queued, waiting for a worker.",
            value=state.runs.get("queued", 0),
        )
        active = GaugeMetricFamily(
            "opengrove_runs_active", "Runs not yet ended, by status.", labels=["status"]
        )
        for status in ACTIVE_STATUSES:
            active.add_metric([status], state.runs.get(status, 0))
        yield active
        queued_age = 0.0
        if state.oldest_queued_seq is not None:
            queued_age = max(0.0, stamp - state.oldest_queued_seq / 1e9)
        yield GaugeMetricFamily(
            "opengrove_run_queue_oldest_age_seconds",
            "Age of the oldest queued run (since it was created; 0 when none is queued).",
            value=queued_age,
        )
        lease_age = 0.0
        if state.oldest_lease_expiry is not None:
            # Leases are renewed every third of their length: past one length, a worker is gone.
            lease_age = max(0.0, stamp - (state.oldest_lease_expiry - self.lease_seconds))
        yield GaugeMetricFamily(
            "opengrove_run_lease_oldest_age_seconds",
            "Time since the stalest lease on an in-progress run was taken or renewed "
            "(healthy: under a third of OPENGROVE_RUN_LEASE_SECONDS; 0 when no run executes).",
            value=lease_age,
        )
        files = GaugeMetricFamily(
            "opengrove_vector_store_files",
            "Vector store files by ingestion status (in_progress: waiting or being ingested).",
            labels=["status"],
        )
        for status in sorted({*FILE_STATUSES, *state.files}):
            files.add_metric([status], state.files.get(status, 0))
        yield files


_registry: CollectorRegistry | None = None


def _instruments() -> CollectorRegistry:
    """This process's registry, or one that adds up every process's files."""
    global _registry
    if MULTIPROCESS_DIR is None:
        return REGISTRY
    if _registry is None:
        _registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(_registry, path=MULTIPROCESS_DIR)
    return _registry


def _forget_dead_processes(path: str) -> None:
    """Drop the live gauges (open streams) of worker processes that died: uvicorn replaces
    a dead worker without telling anyone, and its last values would count forever."""
    for name in os.listdir(path):
        found = _LIVE_GAUGE_FILE.fullmatch(name)
        if found is None:
            continue
        pid = int(found[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)
        except PermissionError:
            pass  # alive, someone else's


async def scrape(db: Database, lease_seconds: float) -> tuple[bytes, str]:
    """The /metrics body and its content type."""
    body = b""
    try:
        state = await db.transact(read_state, writes=False)
    except Exception as exc:
        logger.warning("metrics: reading the run and ingestion gauges failed: %r", exc)
    else:
        scraped = CollectorRegistry(auto_describe=False)
        scraped.register(DatabaseGauges(state, lease_seconds))
        body = generate_latest(scraped)
    if MULTIPROCESS_DIR is not None:
        _forget_dead_processes(MULTIPROCESS_DIR)
    return generate_latest(_instruments()) + body, CONTENT_TYPE_LATEST
