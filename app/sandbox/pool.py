"""Kernels per thread, over any backend: started on first use, one call at a time, restarted
after they die, reaped when idle, when there are too many, or when their thread is gone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from app.sandbox.base import Backend, Execution, Kernel, SandboxFile, SandboxUnavailable

logger = logging.getLogger("opengrove.sandbox")

MAX_READ_BYTES = 512 * 1024 * 1024


@dataclass
class Session:
    kernel: Kernel
    last_used: float = field(default_factory=time.monotonic)
    uploaded: dict[str, str] = field(default_factory=dict)  # file id → path inside


class KernelPool:
    """The `Sandbox` the code_interpreter tool uses (`app.sandbox.base.Sandbox`)."""

    def __init__(
        self,
        backend: Backend,
        *,
        idle_seconds: float,
        call_timeout: float,
        max_kernels: int,
        threads_gone: Callable[[list[str]], Awaitable[set[str]]] | None = None,
    ) -> None:
        self.backend = backend
        self.idle_seconds = idle_seconds
        self.call_timeout = call_timeout
        self.max_kernels = max_kernels
        self.threads_gone = threads_gone
        self.sessions: dict[str, Session] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._probe: asyncio.Task[str | None] | None = None
        self._reaper: asyncio.Task[None] | None = None

    # ---- life ----------------------------------------------------------------------------

    def start(self) -> None:
        """Probe the backend in the background; kernels are offered once it passed."""
        self._probe = asyncio.create_task(self._check(), name="sandbox-probe")
        self._reaper = asyncio.create_task(self._reap_forever(), name="sandbox-reaper")

    async def _check(self) -> str | None:
        started = time.monotonic()
        try:
            await self.backend.probe()
        except SandboxUnavailable as exc:
            logger.warning(
                "code_interpreter is not offered: the %s sandbox is unavailable: %s",
                self.backend.name,
                exc,
            )
            return str(exc)
        except Exception as exc:
            logger.exception("code_interpreter is not offered: the sandbox probe failed")
            return f"{exc.__class__.__name__}: {exc}"
        if self.backend.name == "unsafe-local":
            logger.warning(
                "code_interpreter runs kernels WITHOUT a sandbox (OPENGROVE_SANDBOX=unsafe-local):"
                " code the model writes can read and change everything this server can"
            )
        else:
            logger.info(
                "code_interpreter sandbox ready: %s (checked in %.2f s)",
                self.backend.name,
                time.monotonic() - started,
            )
        return None

    def status(self) -> str:
        """For /health: "starting" while the probe runs, then "ok" or why it is off."""
        if self._probe is None or not self._probe.done():
            return "starting"
        if self._probe.cancelled():
            return "off: the probe was cancelled"
        reason = self._probe.result()
        return "ok" if reason is None else f"off: {reason}"

    async def ready(self) -> str | None:
        if self._probe is None:
            return "the sandbox was not started"
        return await asyncio.shield(self._probe)

    async def close(self) -> None:
        for task in (self._reaper, self._probe):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        for thread_id in list(self.sessions):
            await self.shutdown(thread_id)
        await self.backend.close()

    # ---- kernels -------------------------------------------------------------------------

    def has_session(self, thread_id: str) -> bool:
        return thread_id in self.sessions

    def _lock(self, thread_id: str) -> asyncio.Lock:
        return self._locks.setdefault(thread_id, asyncio.Lock())

    async def _session(self, thread_id: str) -> Session:
        """The thread's session, its kernel running (call with the thread's lock held)."""
        session = self.sessions.get(thread_id)
        if session is None:
            await self._make_room()
            session = Session(await self.backend.launch(thread_id))
            self.sessions[thread_id] = session
        elif not session.kernel.alive():
            await session.kernel.start()
        session.last_used = time.monotonic()
        return session

    async def _make_room(self) -> None:
        while len(self.sessions) >= self.max_kernels:
            idle = [
                (s.last_used, t) for t, s in self.sessions.items() if not self._lock(t).locked()
            ]
            if not idle:
                raise RuntimeError(
                    f"All {self.max_kernels} Python sessions of this server are busy; "
                    "try again shortly."
                )
            _, oldest = min(idle)
            logger.info("sandbox: evicting the least recently used kernel (thread %s)", oldest)
            await self._drop(oldest)

    async def execute(self, thread_id: str, code: str) -> Execution:
        async with self._lock(thread_id):
            session = await self._session(thread_id)
            try:
                return await session.kernel.execute(code, self.call_timeout)
            finally:
                session.last_used = time.monotonic()

    async def upload(self, thread_id: str, file_id: str, name: str, data: bytes) -> str:
        async with self._lock(thread_id):
            session = await self._session(thread_id)
            path = await session.kernel.write_file(name, data)
            session.uploaded[file_id] = path
            return path

    def uploaded(self, thread_id: str) -> dict[str, str]:
        session = self.sessions.get(thread_id)
        return dict(session.uploaded) if session else {}

    def data_dir(self, thread_id: str) -> str:
        return self.backend.data_dir(thread_id)

    async def list_files(self, thread_id: str) -> list[SandboxFile]:
        session = self.sessions.get(thread_id)
        if session is None:
            return []
        async with self._lock(thread_id):
            return await session.kernel.list_files()

    async def read_file(self, thread_id: str, path: str) -> bytes | None:
        session = self.sessions.get(thread_id)
        if session is None:
            return None
        async with self._lock(thread_id):
            return await session.kernel.read_file(path, MAX_READ_BYTES)

    async def shutdown(self, thread_id: str) -> None:
        async with self._lock(thread_id):
            await self._drop(thread_id)
        self._locks.pop(thread_id, None)

    async def _drop(self, thread_id: str) -> None:
        session = self.sessions.pop(thread_id, None)
        if session is not None:
            try:
                await session.kernel.shutdown()
            except Exception:
                logger.exception("sandbox: shutting down the kernel of %s failed", thread_id)

    # ---- reaping -------------------------------------------------------------------------

    async def reap(self) -> list[str]:
        """Shut down kernels idle past the timeout, and those whose thread was deleted."""
        now = time.monotonic()
        stale = [
            t
            for t, s in self.sessions.items()
            if now - s.last_used > self.idle_seconds and not self._lock(t).locked()
        ]
        if self.threads_gone is not None and self.sessions:
            try:
                gone = await self.threads_gone(list(self.sessions))
            except Exception:
                logger.exception("sandbox: checking for deleted threads failed")
                gone = set()
            stale += [t for t in gone if t not in stale]
        for thread_id in stale:
            await self.shutdown(thread_id)
        if stale:
            logger.info("sandbox: shut down %d kernel(s) (idle or thread deleted)", len(stale))
        return stale

    async def _reap_forever(self) -> None:
        interval = max(1.0, min(30.0, self.idle_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap()
            except Exception:
                logger.exception("sandbox: reaping failed")
