from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from app.auth.quotas import quota
from app.deps import CallerDep, Index, Project, Session, Settings
from app.errors import NotFound
from app.files import service
from app.files.schemas import FileObject
from app.files.upload import receive_form
from app.pagination import ListParams
from app.schemas import DeletedObject

router = APIRouter(prefix="/files", tags=["files"])

MULTIPART_FRAMING = 16 * 1024  # boundaries, part headers and the other fields, generously


@router.post("")
async def create_file(
    request: Request, session: Session, caller: CallerDep, settings: Settings
) -> dict[str, Any]:
    limit = settings.max_file_bytes
    room = quota(caller, settings, "stored_bytes")
    # Refused before a byte is read when the declared body could not fit even without its
    # multipart framing; the exact size is checked once the file is in.
    declared = int(request.headers.get("content-length") or 0) - MULTIPART_FRAMING
    await service.check_room(session, caller.project_id, max(declared, 0), room)
    await session.rollback()  # no connection held while the body arrives
    form = await receive_form(request, settings.files_dir, limit)
    try:
        purpose, expiry = service.validate_form(form, limit)
        row = await service.create_file(
            session, caller.project_id, settings.files_dir, form, purpose, expiry, room
        )
    finally:
        form.discard()  # no-op once the file was moved into place
    return FileObject.from_row(row).render()


@router.get("")
async def list_files(
    session: Session,
    project: Project,
    purpose: Annotated[str | None, Query()] = None,
    # Files list differently from everything else: up to 10,000 per page, all by default.
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    after: Annotated[str | None, Query()] = None,
    before: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    params = ListParams(limit=limit, order=order, after=after or None, before=before or None)
    page = await service.list_files(session, project, params, purpose or None)
    return page.to_response(lambda row: FileObject.from_row(row).render())


@router.get("/{file_id}")
async def get_file(file_id: str, session: Session, project: Project) -> dict[str, Any]:
    return FileObject.from_row(await service.get_file(session, project, file_id)).render()


@router.delete("/{file_id}")
async def delete_file(
    file_id: str, session: Session, project: Project, index: Index, settings: Settings
) -> DeletedObject:
    await service.delete_file(session, index, settings.files_dir, project, file_id)
    return DeletedObject(id=file_id, object="file")


@router.get("/{file_id}/content")
async def download_file(
    file_id: str, session: Session, project: Project, settings: Settings
) -> FileResponse:
    row = await service.get_file(session, project, file_id)
    path = service.file_path(settings.files_dir, row.id)
    if not path.is_file():
        raise NotFound("file", file_id)
    # Streamed from disk in chunks; always octet-stream (the bytes are the client's own).
    return FileResponse(path, media_type="application/octet-stream", filename=row.filename)
