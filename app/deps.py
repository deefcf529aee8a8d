"""FastAPI dependencies shared by the routers, all drawn from the one `Runtime` built at start."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.keys import Caller
from app.auth.quotas import ProjectLimits
from app.config import Settings as AppSettings
from app.db import Database
from app.image_urls import ImageUrlPolicy
from app.llm.routing import ModelRouter
from app.retrieval.embeddings import Embedder as AppEmbedder
from app.retrieval.index import VectorIndex
from app.runs.service import RunSignals
from app.sandbox import KernelPool
from app.vector_stores.ingestion import IngestionWorker

if TYPE_CHECKING:
    from app.runtime import Runtime


# Every dependency is `async def`: FastAPI runs a plain `def` dependency in a worker thread,
# a thread hop (and GIL hand-off) per dependency per request.


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with get_runtime(request).db.sessionmaker() as session:
        yield session


Session = Annotated[AsyncSession, Depends(get_session)]


async def get_database(request: Request) -> Database:
    return get_runtime(request).db


DatabaseDep = Annotated[Database, Depends(get_database)]


async def get_settings_dep(request: Request) -> AppSettings:
    return get_runtime(request).settings


Settings = Annotated[AppSettings, Depends(get_settings_dep)]


async def get_model_router(request: Request) -> ModelRouter:
    return get_runtime(request).router


Models = Annotated[ModelRouter, Depends(get_model_router)]


async def get_run_signals(request: Request) -> RunSignals:
    return get_runtime(request).signals


Signals = Annotated[RunSignals, Depends(get_run_signals)]


async def get_index(request: Request) -> VectorIndex:
    index = get_runtime(request).index
    assert index is not None
    return index


Index = Annotated[VectorIndex, Depends(get_index)]


async def get_embedder(request: Request) -> AppEmbedder | None:
    return get_runtime(request).embedder


# None when no embedding model is configured (search is lexical only).
Embedder = Annotated[AppEmbedder | None, Depends(get_embedder)]


async def get_ingestion(request: Request) -> IngestionWorker:
    ingestion = get_runtime(request).ingestion
    assert ingestion is not None
    return ingestion


Ingestion = Annotated[IngestionWorker, Depends(get_ingestion)]


async def get_started_at(request: Request) -> int:
    return get_runtime(request).started_at


# When this process started (unix seconds): the `created` of /v1/models entries.
StartedAt = Annotated[int, Depends(get_started_at)]


def _caller(request: Request) -> Caller:
    return request.state.caller  # set by app.auth.middleware for every /v1 request


async def get_caller(request: Request) -> Caller:
    return _caller(request)


# Who is asking. Services take `caller.project_id`: every object read, listed, changed or
# referenced must belong to it (a foreign id is a missing id).
CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_project_id(request: Request) -> str:
    return _caller(request).project_id


Project = Annotated[str, Depends(get_project_id)]


async def get_limits(request: Request) -> ProjectLimits:
    runtime = get_runtime(request)
    return ProjectLimits(_caller(request), runtime.settings, runtime.streams)


# The caller's project quotas (active runs, open streams).
Limits = Annotated[ProjectLimits, Depends(get_limits)]


async def get_image_urls(request: Request) -> ImageUrlPolicy:
    return get_runtime(request).image_urls


# Checks image_url parts before a message is stored (no fetches of private addresses).
ImageUrls = Annotated[ImageUrlPolicy, Depends(get_image_urls)]


async def get_sandbox(request: Request) -> KernelPool | None:
    return get_runtime(request).sandbox


# code_interpreter's kernels in this process (None when the tool is off or not yet ready).
Sandbox = Annotated[KernelPool | None, Depends(get_sandbox)]
