from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response

from app.deps import Embedder, Index, Ingestion, Models, Project, Session, Settings
from app.pagination import LIST_QUERY_OPENAPI, ListParams, list_params
from app.schemas import DeletedObject
from app.vector_stores import files, search, service
from app.vector_stores.models import VectorStore, VectorStoreFile, VectorStoreFileBatch
from app.vector_stores.schemas import (
    FileBatchCreate,
    FileBatchObject,
    FileContentPage,
    FileStatus,
    SearchRequest,
    SearchResultsPage,
    VectorStoreCreate,
    VectorStoreFileCreate,
    VectorStoreFileObject,
    VectorStoreFileUpdate,
    VectorStoreObject,
    VectorStoreUpdate,
)

router = APIRouter(prefix="/vector_stores", tags=["vector_stores"])

# The SDK's *_and_poll helpers wait this long between polls when the server says so.
POLL_AFTER_MS = "250"


async def _store(session: Session, store: VectorStore) -> dict[str, Any]:
    return VectorStoreObject.from_row(store, await service.count_store(session, store)).render()


def _file(row: VectorStoreFile) -> dict[str, Any]:
    return VectorStoreFileObject.from_row(row).render()


async def _batch(session: Session, batch: VectorStoreFileBatch) -> FileBatchObject:
    return FileBatchObject.from_row(batch, await files.batch_counts(session, batch.id))


# -- vector stores -----------------------------------------------------------------------


@router.post("")
async def create_vector_store(
    body: VectorStoreCreate, session: Session, project: Project, ingestion: Ingestion
) -> dict[str, Any]:
    store = await service.create_vector_store(session, project, body)
    ingestion.wake()
    return await _store(session, store)


@router.get("", openapi_extra=LIST_QUERY_OPENAPI)
async def list_vector_stores(
    session: Session, project: Project, params: Annotated[ListParams, Depends(list_params)]
) -> dict[str, Any]:
    page = await service.list_vector_stores(session, project, params)
    counts = await service.store_counts(session, page.items)
    return page.to_response(lambda row: VectorStoreObject.from_row(row, counts[row.id]).render())


@router.get("/{vector_store_id}")
async def get_vector_store(
    vector_store_id: str, session: Session, project: Project
) -> dict[str, Any]:
    return await _store(session, await service.get_vector_store(session, project, vector_store_id))


@router.post("/{vector_store_id}")
async def modify_vector_store(
    vector_store_id: str, body: VectorStoreUpdate, session: Session, project: Project
) -> dict[str, Any]:
    store = await service.update_vector_store(session, project, vector_store_id, body)
    return await _store(session, store)


@router.delete("/{vector_store_id}")
async def delete_vector_store(
    vector_store_id: str, session: Session, project: Project, index: Index
) -> DeletedObject:
    await service.delete_vector_store(session, index, project, vector_store_id)
    return DeletedObject(id=vector_store_id, object="vector_store.deleted")


# -- files -------------------------------------------------------------------------------


@router.post("/{vector_store_id}/files")
async def create_vector_store_file(
    vector_store_id: str,
    body: VectorStoreFileCreate,
    session: Session,
    project: Project,
    ingestion: Ingestion,
) -> dict[str, Any]:
    row = await files.create_vector_store_file(session, project, vector_store_id, body)
    ingestion.wake()
    return _file(row)


@router.get("/{vector_store_id}/files", openapi_extra=LIST_QUERY_OPENAPI)
async def list_vector_store_files(
    vector_store_id: str,
    session: Session,
    project: Project,
    params: Annotated[ListParams, Depends(list_params)],
    filter: Annotated[FileStatus | None, Query()] = None,
) -> dict[str, Any]:
    page = await files.list_vector_store_files(session, project, vector_store_id, params, filter)
    return page.to_response(_file)


@router.get("/{vector_store_id}/files/{file_id}")
async def get_vector_store_file(
    vector_store_id: str, file_id: str, session: Session, project: Project, response: Response
) -> dict[str, Any]:
    row = await files.get_vector_store_file(session, project, vector_store_id, file_id)
    if row.status == "in_progress":
        response.headers["openai-poll-after-ms"] = POLL_AFTER_MS
    return _file(row)


@router.post("/{vector_store_id}/files/{file_id}")
async def update_vector_store_file(
    vector_store_id: str,
    file_id: str,
    body: VectorStoreFileUpdate,
    session: Session,
    project: Project,
    index: Index,
) -> dict[str, Any]:
    row = await files.update_vector_store_file(
        session, index, project, vector_store_id, file_id, body.attributes
    )
    return _file(row)


@router.delete("/{vector_store_id}/files/{file_id}")
async def delete_vector_store_file(
    vector_store_id: str, file_id: str, session: Session, project: Project, index: Index
) -> DeletedObject:
    await files.delete_vector_store_file(session, index, project, vector_store_id, file_id)
    return DeletedObject(id=file_id, object="vector_store.file.deleted")


@router.get("/{vector_store_id}/files/{file_id}/content")
async def vector_store_file_content(
    vector_store_id: str, file_id: str, session: Session, project: Project, settings: Settings
) -> FileContentPage:
    text = await files.vector_store_file_text(
        session, settings.files_dir, project, vector_store_id, file_id
    )
    return FileContentPage.from_text(text)


# -- file batches ------------------------------------------------------------------------


@router.post("/{vector_store_id}/file_batches")
async def create_file_batch(
    vector_store_id: str,
    body: FileBatchCreate,
    session: Session,
    project: Project,
    ingestion: Ingestion,
) -> FileBatchObject:
    batch = await files.create_file_batch(session, project, vector_store_id, body)
    ingestion.wake()
    return await _batch(session, batch)


@router.get("/{vector_store_id}/file_batches/{batch_id}")
async def get_file_batch(
    vector_store_id: str, batch_id: str, session: Session, project: Project, response: Response
) -> FileBatchObject:
    batch = await _batch(
        session, await files.get_file_batch(session, project, vector_store_id, batch_id)
    )
    if batch.status == "in_progress":
        response.headers["openai-poll-after-ms"] = POLL_AFTER_MS
    return batch


@router.post("/{vector_store_id}/file_batches/{batch_id}/cancel")
async def cancel_file_batch(
    vector_store_id: str, batch_id: str, session: Session, project: Project, index: Index
) -> FileBatchObject:
    batch = await files.cancel_file_batch(session, index, project, vector_store_id, batch_id)
    return await _batch(session, batch)


@router.get("/{vector_store_id}/file_batches/{batch_id}/files", openapi_extra=LIST_QUERY_OPENAPI)
async def list_file_batch_files(
    vector_store_id: str,
    batch_id: str,
    session: Session,
    project: Project,
    params: Annotated[ListParams, Depends(list_params)],
    filter: Annotated[FileStatus | None, Query()] = None,
) -> dict[str, Any]:
    page = await files.list_vector_store_files(
        session, project, vector_store_id, params, filter, batch_id=batch_id
    )
    return page.to_response(_file)


# -- search ------------------------------------------------------------------------------


@router.post("/{vector_store_id}/search")
async def search_vector_store(
    vector_store_id: str,
    body: SearchRequest,
    session: Session,
    project: Project,
    index: Index,
    embedder: Embedder,
    settings: Settings,
    models: Models,
) -> SearchResultsPage:
    queries = [body.query] if isinstance(body.query, str) else list(body.query)
    if body.rewrite_query:  # one model call per query; search_query says what was searched
        model = settings.rewrite_model or (settings.models[0] if settings.models else None)
        queries = await search.rewrite_queries(models, model, queries)
    ranking = body.ranking_options
    hits = await search.search_store(
        session,
        index,
        embedder,
        project,
        vector_store_id,
        queries,
        max_num_results=body.max_num_results,
        score_threshold=ranking.score_threshold if ranking else 0.0,
        filters=body.filters,
        ranker=ranking.ranker if ranking else "auto",
    )
    return SearchResultsPage.from_hits(queries, hits)
