"""Cursor pagination as OpenAI does it: limit/order/after/before → first_id/last_id/has_more.

Rows are ordered by (seq, id): `seq` is a per-row nanosecond sort key, so pages stay
stable when many objects share one `created_at` second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Connection, Integer, Select, and_, bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from app.errors import InvalidRequest
from app.prepared import Prepared

T = TypeVar("T")
Row = TypeVar("Row")


@dataclass(frozen=True)
class ListParams:
    limit: int = 20
    order: Literal["asc", "desc"] = "desc"
    after: str | None = None
    before: str | None = None


class _ListQuery(BaseModel):
    """The list parameters as FastAPI would validate them from the query string."""

    limit: int = Field(20, ge=1, le=100)
    order: Literal["asc", "desc"] = "desc"
    after: str | None = None
    before: str | None = None


_DEFAULT_LIST = ListParams()


async def list_params(request: Request) -> ListParams:  # async: no worker thread
    """The cursor parameters, read from the query string by hand: FastAPI's per-parameter
    extraction cost more than the rest of a list request. Errors are FastAPI's own
    (`RequestValidationError`), so they read as any other bad parameter; the routes list the
    parameters in the OpenAPI document through `LIST_QUERY_OPENAPI`."""
    query = request.query_params
    given = {name: query[name] for name in _ListQuery.model_fields if name in query}
    if not given:
        return _DEFAULT_LIST
    try:
        parsed = _ListQuery.model_validate(given)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("query", *error["loc"])} for error in exc.errors()]
        ) from None
    # An empty cursor (a previous empty page's last_id) means "no cursor".
    return ListParams(
        limit=parsed.limit,
        order=parsed.order,
        after=parsed.after or None,
        before=parsed.before or None,
    )


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    return [
        {"name": name, "in": "query", "required": False, "schema": field}
        for name, field in schema["properties"].items()
    ]


# `openapi_extra=` for routes taking `list_params`: FastAPI cannot see parameters read by hand.
LIST_QUERY_OPENAPI: dict[str, Any] = {"parameters": _query_parameters(_ListQuery)}


@dataclass
class Page(Generic[Row]):
    items: list[Row]
    has_more: bool

    def to_response(self, render: Callable[[Row], Any]) -> dict[str, Any]:
        """The list object; `render` makes each item a dict or a pydantic object."""
        data = [render(item) for item in self.items]
        return {
            "object": "list",
            "data": data,
            # The spec types these as strings (never null), so an empty page gets "".
            "first_id": _id(data[0]) if data else "",
            "last_id": _id(data[-1]) if data else "",
            "has_more": self.has_more,
        }


def _id(item: Any) -> str:
    return item["id"] if isinstance(item, dict) else item.id


async def paginate(
    session: AsyncSession,
    model: Any,
    params: ListParams,
    *where: Any,
    base: Select[Any] | None = None,
) -> Page[Any]:
    """One page of `model` rows matching `where`, in the order and window `params` ask for:
    ORM objects, or with `base` (a select of columns; `model` may then be a table's columns,
    `Model.__table__.c`, to keep the ORM out of it) plain rows."""
    return await session.run_sync(page_of, model, params, where, base)


def page_of(
    executor: Session | Connection,
    model: Any,
    params: ListParams,
    where: Sequence[Any],
    base: Select[Any] | None = None,
) -> Page[Any]:
    """`paginate` inside a synchronous session or a Core connection (`Database.transact`;
    with `base`, as a connection returns plain rows only)."""
    stmt = base if base is not None else select(model)
    stmt = stmt.where(*where)
    descending = params.order == "desc"
    # `before` pages backwards: query in the opposite direction, then flip the result.
    reverse = params.before is not None and params.after is None
    walk_desc = descending != reverse
    for cursor_id, name in ((params.after, "after"), (params.before, "before")):
        if cursor_id is None:
            continue
        cursor = executor.execute(
            select(model.seq, model.id).where(model.id == cursor_id, *where)
        ).first()
        if cursor is None:
            raise InvalidRequest(
                f"Invalid '{name}': no object with id '{cursor_id}' in this list.", param=name
            )
        past_cursor_desc = (name == "after") == descending
        stmt = stmt.where(_beyond(model, cursor.seq, cursor.id, descending=past_cursor_desc))
    keys = _sort_keys(model, descending=walk_desc)
    result = executor.execute(stmt.order_by(*keys).limit(params.limit + 1))
    rows: Sequence[Any] = result.scalars().all() if base is None else result.all()
    items = list(rows[: params.limit])
    if reverse:
        items.reverse()
    return Page(items=items, has_more=len(rows) > params.limit)


def first_pages(statement: Select[Any], model: Any) -> dict[str, Prepared]:
    """`statement` (its filters as bind parameters) as a prepared first page (no cursor)
    for each order; the page size is the parameter `limit`."""
    return {
        order: Prepared(
            statement.order_by(*_sort_keys(model, descending=order == "desc")).limit(
                bindparam("limit", type_=Integer)
            )
        )
        for order in ("asc", "desc")
    }


def first_page(
    conn: Connection, pages: dict[str, Prepared], params: ListParams, values: dict[str, Any]
) -> Page[Any]:
    """A first page through `first_pages`: the hot path of a list without a cursor."""
    rows = pages[params.order].namespaces(conn, {**values, "limit": params.limit + 1})
    return Page(items=rows[: params.limit], has_more=len(rows) > params.limit)


def _sort_keys(model: Any, *, descending: bool) -> tuple[Any, Any]:
    if descending:
        return model.seq.desc(), model.id.desc()
    return model.seq.asc(), model.id.asc()


def _beyond(model: Any, seq: int, row_id: str, *, descending: bool) -> Any:
    """Rows strictly past (seq, id) when walking in the given direction."""
    if descending:
        return or_(model.seq < seq, and_(model.seq == seq, model.id < row_id))
    return or_(model.seq > seq, and_(model.seq == seq, model.id > row_id))
