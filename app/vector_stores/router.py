from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from app.deps import Session
from app.pagination import ListParams, list_params
from app.retrieval.embeddings import Embedder
from app.retrieval.index import VectorIndex
from app.vector_stores import service
from app.vector_stores.schemas import (
    FileBatchCreate,
    FileStatus,
    SearchRequest,
    VectorStoreCreate,
    VectorStoreFileCreate,
    VectorStoreFileObject,
    VectorStoreFileUpdate,
    VectorStoreUpdate,
)

router = APIRouter(prefix="/vector_stores", tags=["vector_stores"])

# The SDK's *_and_poll helpers wait this long between polls when the server says so.
POLL_AFTER_MS = "250"


def get_index(request: Request) -> VectorIndex:
    return request.app.state.index


def get_embedder(request: Request) -> Embedder | None:
    ingestion = getattr(request.app.state, "ingestion", None)
    return getattr(ingestion, "embedder", None)


def wake_ingestion(request: Request) -> None:
    ingestion = getattr(request.app.state, "ingestion", None)
    if ingestion is not None:
        ingestion.wake()


Index = Annotated[VectorIndex, Depends(get_index)]


def _file(row: Any) -> dict[str, Any]:
    return VectorStoreFileObject.from_row(row).render()


# -- vector stores -----------------------------------------------------------------------


@router.post("")
async def create_vector_store(
    body: VectorStoreCreate, request: Request, session: Session
) -> dict[str, Any]:
    store = await service.create_vector_store(session, body)
    wake_ingestion(request)
    return await service.render_store(session, store)


@router.get("")
async def list_vector_stores(
    session: Session, params: Annotated[ListParams, Depends(list_params)]
) -> dict[str, Any]:
    page = await service.list_vector_stores(session, params)
    data = await service.render_stores(session, page.items)
    response = page.to_response(lambda row: {"id": row.id})
    response["data"] = data
    return response


@router.get("/{vector_store_id}")
async def get_vector_store(vector_store_id: str, session: Session) -> dict[str, Any]:
    store = await service.get_vector_store(session, vector_store_id)
    return await service.render_store(session, store)


@router.post("/{vector_store_id}")
async def modify_vector_store(
    vector_store_id: str, body: VectorStoreUpdate, session: Session
) -> dict[str, Any]:
    store = await service.update_vector_store(session, vector_store_id, body)
    return await service.render_store(session, store)


@router.delete("/{vector_store_id}")
async def delete_vector_store(
    vector_store_id: str, session: Session, index: Index
) -> dict[str, Any]:
    await service.delete_vector_store(session, index, vector_store_id)
    return {"id": vector_store_id, "object": "vector_store.deleted", "deleted": True}


# -- files -------------------------------------------------------------------------------


@router.post("/{vector_store_id}/files")
async def create_vector_store_file(
    vector_store_id: str, body: VectorStoreFileCreate, request: Request, session: Session
) -> dict[str, Any]:
    row = await service.create_vector_store_file(session, vector_store_id, body)
    wake_ingestion(request)
    return _file(row)


@router.get("/{vector_store_id}/files")
async def list_vector_store_files(
    vector_store_id: str,
    session: Session,
    params: Annotated[ListParams, Depends(list_params)],
    filter: Annotated[FileStatus | None, Query()] = None,
) -> dict[str, Any]:
    page = await service.list_vector_store_files(session, vector_store_id, params, filter)
    return page.to_response(_file)


@router.get("/{vector_store_id}/files/{file_id}")
async def get_vector_store_file(
    vector_store_id: str, file_id: str, session: Session, response: Response
) -> dict[str, Any]:
    row = await service.get_vector_store_file(session, vector_store_id, file_id)
    if row.status == "in_progress":
        response.headers["openai-poll-after-ms"] = POLL_AFTER_MS
    return _file(row)


@router.post("/{vector_store_id}/files/{file_id}")
async def update_vector_store_file(
    vector_store_id: str,
    file_id: str,
    body: VectorStoreFileUpdate,
    session: Session,
    index: Index,
) -> dict[str, Any]:
    row = await service.update_vector_store_file(
        session, index, vector_store_id, file_id, body.attributes
    )
    return _file(row)


@router.delete("/{vector_store_id}/files/{file_id}")
async def delete_vector_store_file(
    vector_store_id: str, file_id: str, session: Session, index: Index
) -> dict[str, Any]:
    await service.delete_vector_store_file(session, index, vector_store_id, file_id)
    return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}


@router.get("/{vector_store_id}/files/{file_id}/content")
async def vector_store_file_content(
    vector_store_id: str, file_id: str, request: Request, session: Session
) -> dict[str, Any]:
    files_dir = request.app.state.settings.files_dir
    return await service.vector_store_file_content(session, files_dir, vector_store_id, file_id)


# -- file batches ------------------------------------------------------------------------


@router.post("/{vector_store_id}/file_batches")
async def create_file_batch(
    vector_store_id: str, body: FileBatchCreate, request: Request, session: Session
) -> dict[str, Any]:
    batch = await service.create_file_batch(session, vector_store_id, body)
    wake_ingestion(request)
    return await service.render_batch(session, batch)


@router.get("/{vector_store_id}/file_batches/{batch_id}")
async def get_file_batch(
    vector_store_id: str, batch_id: str, session: Session, response: Response
) -> dict[str, Any]:
    batch = await service.get_file_batch(session, vector_store_id, batch_id)
    rendered = await service.render_batch(session, batch)
    if rendered["status"] == "in_progress":
        response.headers["openai-poll-after-ms"] = POLL_AFTER_MS
    return rendered


@router.post("/{vector_store_id}/file_batches/{batch_id}/cancel")
async def cancel_file_batch(
    vector_store_id: str, batch_id: str, session: Session, index: Index
) -> dict[str, Any]:
    batch = await service.cancel_file_batch(session, index, vector_store_id, batch_id)
    return await service.render_batch(session, batch)


@router.get("/{vector_store_id}/file_batches/{batch_id}/files")
async def list_file_batch_files(
    vector_store_id: str,
    batch_id: str,
    session: Session,
    params: Annotated[ListParams, Depends(list_params)],
    filter: Annotated[FileStatus | None, Query()] = None,
) -> dict[str, Any]:
    page = await service.list_vector_store_files(
        session, vector_store_id, params, filter, batch_id=batch_id
    )
    return page.to_response(_file)


# -- search ------------------------------------------------------------------------------


@router.post("/{vector_store_id}/search")
async def search_vector_store(
    vector_store_id: str,
    body: SearchRequest,
    request: Request,
    session: Session,
    index: Index,
) -> dict[str, Any]:
    queries = [body.query] if isinstance(body.query, str) else list(body.query)
    threshold = body.ranking_options.score_threshold if body.ranking_options else 0.0
    return await service.search(
        session,
        index,
        get_embedder(request),
        vector_store_id,
        queries,
        body.max_num_results,
        threshold,
        body.filters,
    )
