"""How the API tells run workers about work: new runs, cancellations.

The API never runs anything: it commits a queued run and says so here. A worker in the same
process takes new runs straight from `offer` (leased before the first commit, so no claim
round trip); workers elsewhere hear of them through PostgreSQL NOTIFY, or find them by polling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from app.runs.store import Row


class LocalWorker(Protocol):
    def take(self, run: Row) -> bool:
        """Lease `run` (not yet committed) to this worker; False when it is full."""

    def withdraw(self, run_id: str) -> None:
        """An offered run was never committed."""

    def wake(self, run_id: str | None) -> None:
        """A run was queued (`run_id` when it is one this worker took)."""

    def cancel(self, run_id: str) -> None:
        """Stop executing `run_id` now if this worker is executing it."""


class RunDispatcher:
    def __init__(self) -> None:
        self._worker: LocalWorker | None = None

    def attach(self, worker: LocalWorker) -> None:
        self._worker = worker

    def offer(self, run: Row) -> bool:
        return self._worker.take(run) if self._worker is not None else False

    def withdraw(self, run_id: str) -> None:
        if self._worker is not None:
            self._worker.withdraw(run_id)

    def queued(self, run_id: str | None = None) -> None:
        if self._worker is not None:
            self._worker.wake(run_id)

    def cancel_requested(self, run_id: str) -> None:
        if self._worker is not None:
            self._worker.cancel(run_id)
