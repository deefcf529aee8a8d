"""Run workers: claim runs, hold leases on them, and execute each (`app.runs.execution`).

A worker leases every run it executes and renews the leases while it lives. Runs whose lease
lapsed — their worker died mid-run — are claimed like queued ones and resumed from their last
closed turn. Leases held by dead processes on this host lapse at once (the lease owner names
its host and pid), so a restarted server resumes its runs without waiting out the lease.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update

from app.db import Database, one_of
from app.ids import now
from app.runs import store
from app.runs.dispatch import RunDispatcher
from app.runs.events import EventWriter
from app.runs.execution import ExecutionContext, RunExecution
from app.runs.models import Run
from app.runs.service import finish_run
from app.tasks import cancel_all

logger = logging.getLogger("opengrove.runs")

HOST = socket.gethostname().replace("_", "-")


def _owner_is_dead(owner: str, me: str) -> bool:
    """True for a lease owner of this host whose process is gone."""
    parts = owner.split("_")
    if len(parts) != 4 or parts[1] != HOST or not parts[2].isdigit():
        return False  # another host, or another naming: wait for the lease to lapse
    pid = int(parts[2])
    if pid == os.getpid():
        return owner != me  # an earlier process that had our pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class RunWorker:
    """Executes up to `concurrency` runs at once in this process."""

    def __init__(
        self,
        db: Database,
        dispatcher: RunDispatcher,
        ctx: ExecutionContext,
        *,
        concurrency: int,
        lease_seconds: float,
    ) -> None:
        self.db = db
        self.ctx = ctx
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.worker_id = f"wrk_{HOST}_{os.getpid()}_{secrets.token_hex(4)}"
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancel: dict[str, asyncio.Event] = {}
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._offered: dict[str, store.Row] = {}  # leased to us as they are created, not committed
        self._handed: list[store.Row] = []  # committed and ours: start without claiming
        self._claim_wanted = True  # set when runs may wait in the database, not in _handed
        dispatcher.attach(self)

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.recover()
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="run-claim"),
            asyncio.create_task(self._maintenance_loop(), name="run-maintenance"),
        ]
        logger.info("run worker %s started (concurrency %d)", self.worker_id, self.concurrency)

    async def stop(self) -> None:
        await cancel_all([*self._loops, *self._tasks.values()])

    @property
    def busy(self) -> int:
        return len(self._tasks) + len(self._handed) + len(self._offered)

    # ---- LocalWorker: what the dispatcher calls ---------------------------------------

    def take(self, run: store.Row) -> bool:
        if self.busy >= self.concurrency:
            return False
        run.lease_owner = self.worker_id
        run.lease_expires_at = time.time() + self.lease_seconds
        self._offered[run.id] = run
        self.ctx.hub.executing_here(run.id)
        return True

    def withdraw(self, run_id: str) -> None:
        self._offered.pop(run_id, None)
        self.ctx.hub.executing_here(run_id, False)

    def wake(self, run_id: str | None) -> None:
        run = self._offered.pop(run_id, None) if run_id else None
        if run is not None:
            self._handed.append(run)  # the whole row, as inserted: no need to read it back
        else:
            self._claim_wanted = True  # a run we did not take: look in the database
        self._wake.set()

    def cancel(self, run_id: str) -> None:
        event = self._cancel.get(run_id)
        if event is not None:
            event.set()

    # ---- claiming --------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while True:
            self._wake.clear()
            handed, self._handed = self._handed, []
            for run in handed:
                self._start(run.id, run)
            claimed: list[str] = []
            free = self.concurrency - len(self._tasks)
            if self._claim_wanted and free > 0:
                self._claim_wanted = False
                try:
                    claimed = await self.claim(free)
                except Exception:
                    logger.exception("claiming runs failed")
                for run_id in claimed:
                    self._start(run_id, None)
                if claimed and len(claimed) >= free:
                    self._claim_wanted = True  # there may be more than we had room for
            if self._handed or (self._claim_wanted and self.concurrency > len(self._tasks)):
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            except TimeoutError:
                self._claim_wanted = True  # look now and then: other processes' runs

    def _start(self, run_id: str, run: store.Row | None) -> None:
        self.ctx.hub.executing_here(run_id)
        self._cancel[run_id] = asyncio.Event()
        self._tasks[run_id] = asyncio.create_task(self._execute(run_id, run), name=run_id)

    async def claim(self, limit: int) -> list[str]:
        """Lease up to `limit` runs: queued ones, and in-progress ones whose worker died
        (counted as an interruption; a run handed back at shutdown is not).

        Fair across projects: the project with the fewest runs executing goes first (its
        k-th waiting run ranks as `executing + k`, ties by age) — 500 runs queued by one
        project do not hold back another's next run."""
        stamp = time.time()
        lapsed = Run.lease_expires_at < stamp
        waiting = or_(
            and_(Run.status == "queued", or_(Run.lease_owner.is_(None), lapsed)),
            and_(Run.status == "in_progress", lapsed),
        )
        if self._tasks:
            # Runs executing here are ours, their leases only renewed late (an event loop
            # starved for seconds, e.g. by litellm's import in a thread): not to be taken
            # again, which would execute them twice, nor counted as interrupted.
            waiting = and_(waiting, Run.id.not_in(list(self._tasks)))
        executing = (
            select(Run.project_id, func.count().label("runs"))
            .where(
                one_of(Run.status, ("queued", "in_progress", "cancelling")),
                Run.lease_owner.is_not(None),
                Run.lease_expires_at >= stamp,
            )
            .group_by(Run.project_id)
            .subquery()
        )
        turn = func.row_number().over(
            partition_by=Run.project_id, order_by=Run.seq
        ) + func.coalesce(executing.c.runs, 0)
        ranked = (
            select(Run.id, Run.seq, turn.label("turn"))
            .outerjoin(executing, executing.c.project_id == Run.project_id)
            .where(waiting)
            .subquery()
        )
        chosen = select(ranked.c.id).order_by(ranked.c.turn, ranked.c.seq).limit(limit)
        # `waiting` again outside: PostgreSQL re-checks it on rows another worker leased
        # since the subquery's snapshot (the window function cannot sit under FOR UPDATE).
        candidates = select(Run.id).where(Run.id.in_(chosen), waiting)
        values: dict[str, Any] = {
            "lease_owner": self.worker_id,
            "lease_expires_at": stamp + self.lease_seconds,
            "interruptions": case(
                (
                    and_(Run.status == "in_progress", Run.lease_owner.is_not(None)),
                    Run.interruptions + 1,
                ),
                else_=Run.interruptions,
            ),
        }
        return [row[0] for row in await self.db.lease(Run.id, candidates, values, [Run.id])]

    # ---- maintenance: leases, cancellation from other processes, expiry ---------------

    async def _maintenance_loop(self) -> None:
        last_renewal = 0.0
        while True:
            await asyncio.sleep(0.5)
            try:
                if self._tasks:
                    await self._poll_cancellations()
                if time.monotonic() - last_renewal > self.lease_seconds / 3:
                    last_renewal = time.monotonic()
                    await self._renew_leases()
                    await self.recover()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("run maintenance failed")

    async def _poll_cancellations(self) -> None:
        async with self.db.sessionmaker() as session:
            ids = (
                await session.scalars(
                    select(Run.id).where(Run.id.in_(list(self._tasks)), Run.status == "cancelling")
                )
            ).all()
        for run_id in ids:
            self.cancel(run_id)

    async def _renew_leases(self) -> None:
        if not self._tasks:
            return
        async with self.db.sessionmaker() as session:
            await session.execute(
                update(Run)
                .where(Run.lease_owner == self.worker_id, Run.id.in_(list(self._tasks)))
                .values(lease_expires_at=time.time() + self.lease_seconds)
                .execution_options(synchronize_session=False)
            )
            await session.commit()

    async def recover(self) -> None:
        """Lapse leases of dead processes on this host; end cancelled runs whose worker
        vanished, and runs past their expiry. (Interrupted runs are resumed by `claim`.)"""
        stamp = time.time()
        async with self.db.sessionmaker() as session:
            owners = (
                await session.scalars(
                    select(Run.lease_owner)
                    .where(
                        one_of(Run.status, ("queued", "in_progress", "cancelling")),
                        Run.lease_owner.like(f"wrk\\_{HOST}\\_%", escape="\\"),
                        Run.lease_expires_at >= stamp,
                    )
                    .distinct()
                )
            ).all()
            dead = [o for o in owners if o and _owner_is_dead(o, self.worker_id)]
            if dead:
                await session.execute(
                    update(Run)
                    .where(Run.lease_owner.in_(dead))
                    .values(lease_expires_at=0.0)
                    .execution_options(synchronize_session=False)
                )
                await session.commit()
                self._claim_wanted = True
                self._wake.set()
            to_end = (
                await session.scalars(
                    select(Run).where(
                        or_(
                            and_(
                                Run.status == "cancelling",
                                Run.lease_owner.is_not(None),
                                Run.lease_expires_at < stamp,
                            ),
                            and_(
                                one_of(Run.status, ("queued", "requires_action")),
                                Run.lease_owner.is_(None),
                                Run.expires_at < now(),
                            ),
                        )
                    )
                )
            ).all()
            for run in to_end:
                writer = EventWriter(self.ctx.hub, run.id, run.next_event_seq)
                ending = "cancelled" if run.status == "cancelling" else "expired"
                await finish_run(session, run, writer, ending)

    # ---- execution -------------------------------------------------------------------

    async def _execute(self, run_id: str, run: store.Row | None) -> None:
        try:
            row = (
                run
                if run is not None
                else await self.db.transact(store.load_run, run_id, writes=False)
            )
            if row is not None and row.lease_owner == self.worker_id:
                await RunExecution(self.ctx, row, self._cancel[run_id]).execute()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("run %s: worker error", run_id)
        finally:
            at_capacity = len(self._tasks) >= self.concurrency
            self._tasks.pop(run_id, None)
            self._cancel.pop(run_id, None)
            self.ctx.hub.executing_here(run_id, False)
            if at_capacity:
                self._claim_wanted = True  # a slot opened: look for runs that waited for one
                self._wake.set()
