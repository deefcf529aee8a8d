"""Metrics across `serve --processes N`: where the worker processes keep their values.

prometheus_client chooses, when it is first imported, between values in memory (one
process) and values in per-process files under PROMETHEUS_MULTIPROC_DIR, which /metrics in
any process adds up. So the directory is set up here, before uvicorn starts the workers,
by a module that does not import prometheus_client itself.

The directory is `<data dir>/metrics/<host>-<pid>`, one per `serve`: servers on other
machines or containers may share the data dir, and their process ids may coincide with ours.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket

from app.config import Settings

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_metrics_dir(settings: Settings) -> None:
    """A fresh directory for several processes (removed when `serve` exits), none for one.
    Directories left by servers of this host that died without cleaning up go too."""
    os.environ.pop(ENV, None)
    if not settings.metrics_enabled or settings.processes <= 1:
        return
    root = settings.data_dir / "metrics"
    host = socket.gethostname()
    if root.is_dir():
        for path in root.iterdir():
            name, _, pid = path.name.rpartition("-")
            if name == host and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
    path = (root / f"{host}-{os.getpid()}").resolve()
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ[ENV] = str(path)
    atexit.register(shutil.rmtree, path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
