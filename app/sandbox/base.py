"""The sandbox's narrow interface: stateful Python kernels, one per thread, that run untrusted
code where it cannot see the server.

`Sandbox` is what the code_interpreter tool uses (`app.sandbox.pool.KernelPool` implements it
once); each backend (`app.sandbox.local`, `app.sandbox.remote`) is a small strategy that only
launches kernels and moves files in and out of one (`Backend` and `Kernel`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

DATA_DIR = "/mnt/data"  # where files live inside a local kernel (OpenAI's path)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class SandboxUnavailable(Exception):
    """The sandbox cannot run here; the message says why (logged at start)."""


@dataclass
class Execution:
    """What one call produced, in order of arrival within each kind."""

    logs: str = ""  # stdout, stderr, results and tracebacks, as the user would read them
    images: list[bytes] = field(default_factory=list)  # displayed PNGs
    error: str | None = None  # "NameError: x" for a failed cell; a sandbox error otherwise
    timed_out: bool = False
    kernel_lost: bool = False  # the kernel died or was restarted: its variables are gone


@dataclass(frozen=True)
class SandboxFile:
    path: str  # absolute path inside the sandbox, e.g. /mnt/data/out.csv
    size: int
    mtime: float


class Kernel(Protocol):
    """One running kernel (a backend's own); the pool serializes calls to it."""

    data_dir: str  # the directory the code sees its files in (and its working directory)

    async def start(self) -> None:
        """Start (or, after it died or was killed, start again) keeping the kernel's files."""

    async def execute(self, code: str, time_limit: float) -> Execution: ...

    async def write_file(self, name: str, data: bytes) -> str:
        """Put `data` at `<data_dir>/<name>`; returns the path the code sees."""

    async def list_files(self) -> list[SandboxFile]: ...

    async def read_file(self, path: str, limit: int) -> bytes | None:
        """A regular file under data_dir (None if missing, not a file, or over `limit`)."""

    def alive(self) -> bool: ...

    async def shutdown(self) -> None: ...


class Backend(Protocol):
    """A way to run kernels: `local` (bubblewrap on this machine) or `remote` (a gateway)."""

    name: str

    async def probe(self) -> None:
        """Raise SandboxUnavailable (with the reason) if kernels cannot run."""

    def data_dir(self, thread_id: str) -> str:
        """Where the thread's files are, as its code sees them (known before a kernel starts)."""

    async def launch(self, thread_id: str) -> Kernel:
        """A started kernel for the thread, with an empty data directory."""

    async def close(self) -> None: ...


class Sandbox(Protocol):
    """What the code_interpreter tool needs: a kernel per thread, files in and out."""

    backend: Backend

    async def ready(self) -> str | None:
        """None when kernels can run; otherwise why not (the tool is then not offered)."""

    def has_session(self, thread_id: str) -> bool:
        """A kernel (or its files) for this thread lives in this process."""

    async def execute(self, thread_id: str, code: str) -> Execution:
        """Run `code` in the thread's kernel (started if needed) within the call timeout."""

    async def upload(self, thread_id: str, file_id: str, name: str, data: bytes) -> str:
        """Put a file at `<data dir>/<name>` in the thread's kernel; returns its path."""

    def uploaded(self, thread_id: str) -> dict[str, str]:
        """The files uploaded into the thread's live session: file id → path inside."""

    async def list_files(self, thread_id: str) -> list[SandboxFile]: ...

    async def read_file(self, thread_id: str, path: str) -> bytes | None: ...

    def data_dir(self, thread_id: str) -> str: ...

    async def shutdown(self, thread_id: str) -> None: ...

    async def reap(self) -> list[str]:
        """Shut down kernels idle past the idle timeout; returns their thread ids."""

    async def close(self) -> None: ...


def clean_traceback(lines: list[str]) -> str:
    return ANSI.sub("", "\n".join(lines))
