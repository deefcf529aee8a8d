"""Stateful Python kernels for code_interpreter, one per thread, where untrusted code cannot
see the server. The interface is `base.Sandbox` (implemented by `pool.KernelPool`); the
backends are strategies picked by OPENGROVE_SANDBOX (`BACKENDS`)."""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from app.config import Settings
from app.sandbox.base import Backend, Execution, Sandbox, SandboxFile, SandboxUnavailable
from app.sandbox.pool import KernelPool

__all__ = [
    "BACKENDS",
    "Execution",
    "KernelPool",
    "Sandbox",
    "SandboxFile",
    "SandboxUnavailable",
    "create_sandbox",
]


def _local(settings: Settings, *, unsafe: bool = False) -> Backend:
    from app.sandbox.local import LocalBackend, default_kernel_venv, find_bwrap

    return LocalBackend(
        kernel_venv=settings.kernel_venv or default_kernel_venv(),
        workspace_dir=settings.sandbox_dir or Path(tempfile.gettempdir()) / "opengrove-sandbox",
        bwrap=None if unsafe else find_bwrap(settings.sandbox_bwrap),
        unsafe=unsafe,
        memory_bytes=settings.sandbox_memory_mb * 1024 * 1024,
        cpu_seconds=settings.sandbox_cpu_seconds,
        max_processes=settings.sandbox_max_processes,
        max_file_bytes=settings.sandbox_max_file_mb * 1024 * 1024,
        tmp_bytes=256 * 1024 * 1024,
    )


def _remote(settings: Settings) -> Backend:
    from app.sandbox.remote import RemoteBackend

    if not settings.sandbox_url:
        raise SandboxUnavailable("OPENGROVE_SANDBOX=remote needs OPENGROVE_SANDBOX_URL")
    return RemoteBackend(settings.sandbox_url, settings.sandbox_token, settings.sandbox_remote_dir)


BACKENDS: dict[str, Callable[[Settings], Backend]] = {
    "local": _local,
    "unsafe-local": lambda settings: _local(settings, unsafe=True),
    "remote": _remote,
}


class _Unavailable:
    """A backend that only says why it is not there (the tool is then not offered)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    async def probe(self) -> None:
        raise SandboxUnavailable(self.reason)

    def data_dir(self, thread_id: str) -> str:
        return "/mnt/data"

    async def launch(self, thread_id: str) -> None:  # type: ignore[override]
        raise SandboxUnavailable(self.reason)

    async def close(self) -> None:
        return None


def create_sandbox(
    settings: Settings, threads_gone: Callable[[list[str]], Awaitable[set[str]]] | None = None
) -> KernelPool | None:
    """The process's sandbox (started: it probes its backend in the background), or None
    when OPENGROVE_SANDBOX=off."""
    if settings.sandbox == "off":
        return None
    try:
        backend = BACKENDS[settings.sandbox](settings)
    except SandboxUnavailable as exc:
        backend = _Unavailable(settings.sandbox, str(exc))  # type: ignore[assignment]
    pool = KernelPool(
        backend,
        idle_seconds=settings.sandbox_idle_seconds,
        call_timeout=settings.sandbox_call_timeout,
        max_kernels=settings.sandbox_max_kernels,
        threads_gone=threads_gone,
    )
    pool.start()
    return pool
