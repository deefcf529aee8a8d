"""The ASGI app: routers under /v1 and at the root, error handlers, request ids, lifespan."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.assistants.router import router as assistants_router
from app.config import Settings, get_settings
from app.errors import install_error_handlers
from app.files.router import router as files_router
from app.models_api.router import router as models_router
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
        request_id = request_id or ("req_" + secrets.token_hex(16)).encode()

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


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.start(settings, run_workers=settings.run_workers)
        app.state.runtime = runtime  # the only app state: routers use `app.deps`
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="opengrove",
        description="OpenAI Assistants API v2, self-hosted.",
        lifespan=lifespan,
        docs_url="/docs",
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

    app.add_middleware(RequestIdMiddleware)
    return app
