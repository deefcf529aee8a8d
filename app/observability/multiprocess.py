"""Metrics across `serve --processes N`: where the worker processes keep their values.

prometheus_client chooses, when it is first imported, between values in memory (one
process) and values in per-process files under PROMETHEUS_MULTIPROC_DIR, which /metrics in
any process adds up. So the directory is set up here, before uvicorn starts the workers,
by a module that does not import prometheus_client itself.
"""

from __future__ import annotations

import os
import shutil

from app.config import Settings

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_metrics_dir(settings: Settings) -> None:
    """A fresh `<data dir>/metrics` for several processes (values of an earlier server
    would be added to this one's); none for one process."""
    path = settings.data_dir / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    if settings.metrics_enabled and settings.processes > 1:
        path.mkdir(parents=True)
        os.environ[ENV] = str(path.resolve())
    else:
        os.environ.pop(ENV, None)
