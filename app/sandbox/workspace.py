"""A local kernel's /mnt/data on the host, read and written by the server without following
anything the sandboxed code planted there.

The code owns that directory: it can replace any name with a symlink to a host path at any
moment. The server (often root) therefore never resolves a path in it: every component is
opened relative to the directory's own descriptor with O_NOFOLLOW, so a symlink is an error,
never a way out.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
from pathlib import Path

from app.sandbox.base import SandboxFile

MAX_LISTED = 500  # files listed per workspace
MAX_DEPTH = 4


def _parts(relative: str) -> list[str] | None:
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return parts


def _open_dir(root: Path, parts: list[str]) -> int:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for part in parts:
            nxt = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_file(root: Path, name: str, data: bytes, uid: int | None) -> None:
    """Create `root/name` (replacing whatever is there) owned by the sandbox's uid."""
    parts = _parts(name)
    if parts is None or len(parts) != 1:
        raise ValueError(f"bad file name: {name!r}")
    fd = _open_dir(root, [])
    try:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            os.unlink(parts[0], dir_fd=fd)
        out = os.open(
            parts[0],
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=fd,
        )
        try:
            if uid is not None:
                os.fchown(out, uid, uid)
            view = memoryview(data)
            while view:
                written = os.write(out, view)
                view = view[written:]
        finally:
            os.close(out)
    finally:
        os.close(fd)


def read_file(root: Path, relative: str, limit: int) -> bytes | None:
    parts = _parts(relative)
    if parts is None:
        return None
    try:
        parent = _open_dir(root, parts[:-1])
    except OSError:
        return None
    try:
        fd = os.open(
            parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent
        )
    except OSError:
        return None
    finally:
        os.close(parent)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def list_files(root: Path, shown_as: str) -> list[SandboxFile]:
    """Regular files under root (symlinks and special files skipped), as the code sees them."""
    found: list[SandboxFile] = []

    def walk(parts: list[str]) -> None:
        if len(found) >= MAX_LISTED or len(parts) > MAX_DEPTH:
            return
        try:
            fd = _open_dir(root, parts)
        except OSError:
            return
        try:
            names = sorted(os.listdir(fd))
            for name in names:
                try:
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    walk([*parts, name])
                elif stat.S_ISREG(info.st_mode) and len(found) < MAX_LISTED:
                    path = "/".join([shown_as.rstrip("/"), *parts, name])
                    found.append(SandboxFile(path, info.st_size, info.st_mtime))
        finally:
            os.close(fd)

    walk([])
    return found


def remove_tree(path: Path) -> None:
    """rmtree that never follows symlinks (shutil's default on Linux, fd-based)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


class ProcessRoot:
    """This process's directory of kernel workspaces: `<base>/p<pid>-<random>`, locked for the
    process's life. Directories of processes that are gone (a crash, a restart) are removed
    when the next process starts: their kernels died with them."""

    def __init__(self, base: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o711)  # others may traverse to their own workspace, never list
        self._sweep(base)
        self.path = Path(tempfile.mkdtemp(prefix=f"p{os.getpid()}-", dir=base))
        os.chmod(self.path, 0o711)
        self._lock = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

    @staticmethod
    def _sweep(base: Path) -> None:
        for entry in base.iterdir():
            lock = entry / ".lock"
            if not entry.is_dir() or entry.is_symlink():
                continue
            try:
                fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                remove_tree(entry)  # never locked: a process that died while starting
                continue
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live process's
            finally:
                os.close(fd)
            remove_tree(entry)

    def close(self) -> None:
        remove_tree(self.path)
        os.close(self._lock)
