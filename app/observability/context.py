"""Who a log line is about: request id, project and run, carried in context variables.

Set by the request middleware (request id), the auth layer (project) and the run executor
(run id); read by the log formatter. Context variables follow asyncio tasks, so a run's
task keeps its ids without passing them around.
"""

from __future__ import annotations

from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
project_id: ContextVar[str | None] = ContextVar("project_id", default=None)
run_id: ContextVar[str | None] = ContextVar("run_id", default=None)
