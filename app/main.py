"""The ASGI app: routers under /v1 and at the root, error handlers, request ids, lifespan."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.assistants.router import router as assistants_router
from app.auth.middleware import AuthMiddleware, is_loopback
from app.config import Settings, get_settings
from app.errors import install_error_handlers
from app.files.router import router as files_router
from app.ids import new_id
from app.models_api.router import router as models_router
from app.observability import context, scrape
from app.observability.metrics import HttpMetricsMiddleware
from app.request_guard import LOOPBACK_HOSTS, RequestGuard
from app.runs.router import router as runs_router
from app.runtime import Runtime
from app.threads.router import router as threads_router
from app.vector_stores.router import router as vector_stores_router

logger = logging.getLogger("opengrove")


class RequestIdMiddleware:
    """Every response carries `x-request-id` (the client's own, or a fresh `req_…`).

    A plain ASGI middleware: BaseHTTPMiddleware would buffer SSE streams.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value
                break
        request_id = request_id or new_id("req_").encode()  # pooled randomness: no syscall
        # Set in this request's own task (uvicorn runs each in one): its log lines carry it.
        context.request_id.set(request_id.decode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)


def api_router() -> APIRouter:
    router = APIRouter()
    router.include_router(assistants_router)
    router.include_router(runs_router)  # before threads: /threads/runs is not a thread id
    router.include_router(threads_router)
    router.include_router(models_router)
    router.include_router(files_router)
    router.include_router(vector_stores_router)
    return router


def _allowed_hosts(settings: Settings) -> set[str] | None:
    """None: any Host. On loopback the default is loopback names only, so a web page that
    rebinds a DNS name to 127.0.0.1 is refused."""
    configured = set(settings.allowed_hosts or [])
    if "*" in configured:
        return None
    if is_loopback(settings.host):
        return set(LOOPBACK_HOSTS) | configured
    return configured or None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    allow_anonymous = is_loopback(settings.host) or settings.allow_unauthenticated

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.start(settings, run_workers=settings.run_workers)
        app.state.runtime = runtime  # the only app state: routers use `app.deps`
        if not await runtime.keyring.any_keys():
            if not allow_anonymous:
                await runtime.stop()
                raise SystemExit(
                    f"Refusing to serve on {settings.host} with no API keys: anyone who reaches "
                    "the port would own the server. Issue a key with `opengrove keys create "
                    "--project NAME` (or set OPENGROVE_BOOTSTRAP_KEY), or bind to 127.0.0.1; "
                    "OPENGROVE_ALLOW_UNAUTHENTICATED=true turns this check off."
                )
            logger.warning(
                "No API keys exist: accepting any key (bound to %s). Once a key exists "
                "(`opengrove keys create --project NAME`), every request needs one.",
                settings.host,
            )
        if threading.current_thread() is threading.main_thread():
            runtime.settle_heap()  # the process's own server, not one a test runs in a thread
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="opengrove",
        description="OpenAI Assistants API v2, self-hosted.",
        lifespan=lifespan,
        docs_url="/docs" if settings.docs_enabled else None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
        redoc_url=None,
    )
    install_error_handlers(app)
    # Clients differ in whether base_url ends in /v1: serve both.
    app.include_router(api_router(), prefix="/v1")
    app.include_router(api_router(), include_in_schema=False)

    @app.get("/health", include_in_schema=False)
    async def health() -> JSONResponse:
        # "starting" (200) while slow parts load: requests that need them wait for them.
        healthy, checks = await app.state.runtime.health()
        return JSONResponse(checks, status_code=200 if healthy else 503)

    if settings.metrics_enabled:

        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            runtime = app.state.runtime
            body, content_type = await scrape.scrape(runtime.db, settings.run_lease_seconds)
            return Response(body, media_type=content_type)

    open_paths = {"/health"} | ({"/docs", "/openapi.json"} if settings.docs_enabled else set())
    app.add_middleware(
        AuthMiddleware,
        allow_anonymous=allow_anonymous,
        organization=settings.organization,
        open_paths=frozenset(open_paths),
    )
    if settings.metrics_enabled:  # outside auth: refusals are counted and timed too
        app.add_middleware(HttpMetricsMiddleware)
    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.max_request_bytes,
        max_upload_bytes=settings.max_file_bytes,
        allowed_hosts=_allowed_hosts(settings),
    )
    app.add_middleware(RequestIdMiddleware)  # outermost: refusals carry a request id too
    return app
