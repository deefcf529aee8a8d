"""Prometheus instruments (every name starts `opengrove_`) and the HTTP middleware.

The instruments are module globals, updated where things happen: the middleware (HTTP
requests), the run state machine (run outcomes), run streams, the LLM adapter (model
latency and tokens), ingestion, and the rate limiter (`count_rate_limited`). Gauges that
describe the database (queue depth, lease age, files by status) are read when /metrics is
scraped (`app.observability.scrape`).

With `serve --processes N` prometheus_client keeps these values in files shared by the
processes (see `app.observability.multiprocess`); gauges then say how to combine them.
"""

from __future__ import annotations

import os
from time import perf_counter
from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.multiprocess import ENV

# Read once, as prometheus_client itself does when it is imported.
MULTIPROCESS_DIR: str | None = os.environ.get(ENV)
# No `…_created` series beside every counter and histogram: they double the output and
# nothing here needs them (Prometheus notices resets by itself).
disable_created_metrics()

UNMATCHED = "unmatched"  # the route label of requests no route matched (404s, refusals)
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# Resting statuses a run reaches; the rest (queued, in_progress, cancelling) are on the way.
RUN_OUTCOMES = ("completed", "failed", "cancelled", "expired", "incomplete", "requires_action")

HTTP_REQUESTS = Counter(
    "opengrove_http_requests_total",
    "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "opengrove_http_request_duration_seconds",
    "Time from a request's arrival until its response starts (for a run's event stream: "
    "until the stream opens), by route template and method.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RUNS = Counter(
    "opengrove_run_outcomes_total",
    "Runs reaching a resting status: completed, failed, cancelled, expired, incomplete, or "
    "requires_action (waiting for tool outputs).",
    ["status"],
)
OPEN_STREAMS = Gauge(
    "opengrove_sse_streams_open",
    "Run event streams (server-sent events) open now.",
    multiprocess_mode="livesum",
)
MODEL_FIRST_TOKEN = Histogram(
    "opengrove_model_time_to_first_token_seconds",
    "Time from a model call's start (retries included) to its first output, by model.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60),
)
MODEL_DURATION = Histogram(
    "opengrove_model_call_duration_seconds",
    "Time from a model call's start (retries included) to its last chunk, by model.",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300),
)
MODEL_CALLS = Counter(
    "opengrove_model_calls_total",
    "Model calls by model and outcome (ok, or error after the last attempt).",
    ["model", "outcome"],
)
MODEL_TOKENS = Counter(
    "opengrove_model_tokens_total",
    "Tokens the model provider reported, by model and type (prompt, completion).",
    ["model", "type"],
)
INGESTED_FILES = Counter(
    "opengrove_ingestion_files_total",
    "Vector store files whose ingestion ended, by outcome (completed, failed).",
    ["outcome"],
)
RATE_LIMITED = Counter(
    "opengrove_rate_limited_total",
    "Requests refused by the rate limiter, by operation class.",
    ["operation"],
)

# Bound once: these are counted on hot paths, and every outcome shows (at 0) from the start.
_RUN_OUTCOME_COUNTERS = {status: RUNS.labels(status) for status in RUN_OUTCOMES}
_INGESTION_COUNTERS = {
    outcome: INGESTED_FILES.labels(outcome) for outcome in ("completed", "failed")
}


def count_run_status(status: str) -> None:
    """A run moved to `status` (counted when it is one of RUN_OUTCOMES)."""
    counter = _RUN_OUTCOME_COUNTERS.get(status)
    if counter is not None:
        counter.inc()


def count_ingested(outcome: str) -> None:
    _INGESTION_COUNTERS[outcome].inc()


def count_rate_limited(operation: str) -> None:
    RATE_LIMITED.labels(operation).inc()


class _Usage(Protocol):
    prompt_tokens: int
    completion_tokens: int


class ModelCall:
    """Times one model call, across its attempts, and counts its tokens."""

    __slots__ = ("model", "started")

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = perf_counter()

    def first_output(self) -> None:
        MODEL_FIRST_TOKEN.labels(self.model).observe(perf_counter() - self.started)

    def finished(self, usage: _Usage | None) -> None:
        MODEL_DURATION.labels(self.model).observe(perf_counter() - self.started)
        MODEL_CALLS.labels(self.model, "ok").inc()
        if usage is not None:
            MODEL_TOKENS.labels(self.model, "prompt").inc(usage.prompt_tokens)
            MODEL_TOKENS.labels(self.model, "completion").inc(usage.completion_tokens)

    def failed(self) -> None:
        MODEL_CALLS.labels(self.model, "error").inc()


class HttpMetricsMiddleware:
    """Counts and times every HTTP request by route template (`/v1/threads/{thread_id}`,
    never a raw id), method and status.

    A plain ASGI middleware: BaseHTTPMiddleware would buffer SSE streams. The router puts
    the matched route in the scope on the way in, so it is known when the response starts;
    the labelled instruments are looked up once per (route, method, status) and kept.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # (id of the route or endpoint, method, status) → (request counter, latency histogram)
        self._bound: dict[tuple[int, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        recorded = False

        def record(status: int) -> None:
            nonlocal recorded
            recorded = True
            method = scope["method"]
            if method not in _METHODS:
                method = "other"  # clients choose methods: keep the label set bounded
            # id(None) for unmatched requests: one fixed key, like the label.
            key = (id(scope.get("route") or scope.get("endpoint")), method, status)
            bound = self._bound.get(key)
            if bound is None:
                template = _template(scope)
                bound = self._bound[key] = (
                    HTTP_REQUESTS.labels(template, method, str(status)),
                    HTTP_LATENCY.labels(template, method),
                )
            bound[0].inc()
            bound[1].observe(perf_counter() - started)

        async def send_recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                record(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        except Exception:
            if not recorded:
                record(500)  # what the server error middleware outside us answers
            raise


def _template(scope: Scope) -> str:
    route = scope.get("route")  # FastAPI's routes put themselves in the scope
    if route is not None:
        return str(route.path)
    endpoint = scope.get("endpoint")  # plain Starlette routes (/docs) only their endpoint
    if endpoint is not None:
        for candidate in getattr(scope.get("app"), "routes", ()):
            if getattr(candidate, "endpoint", None) is endpoint:
                return str(candidate.path)
    return UNMATCHED
