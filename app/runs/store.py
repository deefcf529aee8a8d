"""The runs hot path in SQL: a few Core statements per step, run through `Database.transact`.

Functions here take a synchronous Connection and run inside one transaction: the executor
calls them for every run it executes, so they stay lean — no ORM unit of work, rows as plain
namespaces with the ORM's attribute names (so `render_run`, `render_step` and
`MessageObject.from_row` render them as they render ORM rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, or_, select, update

from app.db import one_of
from app.observability.metrics import count_run_status
from app.prepared import Prepared, defer_update, insert_row, prepared
from app.runs.models import Run, RunStep
from app.runs.state import transition_values
from app.threads.models import Message

Row = SimpleNamespace

RUNS: Table = Run.__table__  # type: ignore[assignment]
STEPS: Table = RunStep.__table__  # type: ignore[assignment]
MESSAGES: Table = Message.__table__  # type: ignore[assignment]


def _attribute_names(table: Table) -> dict[str, str]:
    """Column name → ORM attribute name (`metadata` is `metadata_` on the classes)."""
    return {
        column.name: ("metadata_" if column.name == "metadata" else column.name)
        for column in table.columns
    }


_RUN_ATTRS = _attribute_names(RUNS)
_STEP_ATTRS = _attribute_names(STEPS)
_MESSAGE_ATTRS = _attribute_names(MESSAGES)
_RUN_KEYS = [_RUN_ATTRS[column.name] for column in RUNS.columns]  # a row's attributes, in order


def as_row(mapping: Any, attrs: dict[str, str]) -> Row:
    return Row(**{attrs[name]: value for name, value in mapping.items()})


def row_values(row: Row, attrs: dict[str, str]) -> dict[str, Any]:
    """A namespace row back to column values, for an INSERT."""
    return {name: getattr(row, attr) for name, attr in attrs.items() if hasattr(row, attr)}


def fill_run(run: Row, values: dict[str, Any]) -> None:
    """Complete a new run's row with `values`: every column they do not name is None (NULL
    once inserted), so the row is whole without reading it back."""
    for attr in _RUN_ATTRS.values():
        setattr(run, attr, values.get(attr, getattr(run, attr, None)))


def insert_run(conn: Connection, run: Row) -> None:
    # NULLs left out: the columns' defaults apply.
    columns = {
        name: value for name, value in row_values(run, _RUN_ATTRS).items() if value is not None
    }
    insert_row(conn, RUNS, columns)


_LOAD_RUN = Prepared(select(RUNS).where(RUNS.c.id == bindparam("run_id")))


def load_run(conn: Connection, run_id: str) -> Row | None:
    for found in _LOAD_RUN.rows(conn, {"run_id": run_id}):
        return Row(**dict(zip(_RUN_KEYS, found, strict=True)))
    return None


def transition(
    conn: Connection, run: Row, to: str, fields: dict[str, Any], *, held: bool = False
) -> bool:
    """The state machine's conditional UPDATE (see `app.runs.state`), on a plain row.

    `held`: as the guard of the writes that follow it (`Prepared.guard`): on PostgreSQL it
    may be assumed to succeed, and `GuardMissed` raised when the transaction ends instead of
    False returned; the caller then reloads the run (`reload_run`) and counts the status
    itself (`count_run_status`) once the transaction committed."""
    values, allowed = transition_values(to, fields)
    keys = tuple(values)

    def build() -> Prepared:
        statement = update(RUNS).where(
            RUNS.c.id == bindparam("run_id"), one_of(RUNS.c.status, allowed)
        )
        return Prepared(statement, keys)

    moved = prepared(("transition", to, keys), build)
    params = {**values, "run_id": run.id}
    if not (moved.guard(conn, params) if held else moved.execute(conn, params).rowcount > 0):
        reload_run(conn, run)
        return False
    for name, value in values.items():
        setattr(run, _RUN_ATTRS[name], value)
    if not held:
        count_run_status(to)
    return True


def reload_run(conn: Connection, run: Row) -> None:
    """`run` as its row is now."""
    fresh = load_run(conn, run.id)
    if fresh is not None:
        vars(run).update(vars(fresh))


def update_run(conn: Connection, run_id: str, values: dict[str, Any]) -> None:
    defer_update(conn, RUNS, "id", run_id, values)


def insert_message(conn: Connection, message: Row) -> None:
    insert_row(conn, MESSAGES, row_values(message, _MESSAGE_ATTRS))


def insert_step(conn: Connection, step: Row) -> None:
    insert_row(conn, STEPS, row_values(step, _STEP_ATTRS))


def update_message(conn: Connection, message: Row, names: Iterable[str]) -> None:
    values = {name: getattr(message, _MESSAGE_ATTRS[name]) for name in names}
    defer_update(conn, MESSAGES, "id", message.id, values)


def update_step(conn: Connection, step: Row, names: Iterable[str]) -> None:
    defer_update(
        conn, STEPS, "id", step.id, {name: getattr(step, _STEP_ATTRS[name]) for name in names}
    )


_HISTORY = Prepared(
    select(MESSAGES.c.id, MESSAGES.c.role, MESSAGES.c.content)
    .where(
        MESSAGES.c.thread_id == bindparam("thread_id"),
        or_(MESSAGES.c.run_id.is_(None), MESSAGES.c.run_id != bindparam("run_id")),
    )
    .order_by(MESSAGES.c.seq)
)


def history(conn: Connection, thread_id: str, run_id: str) -> list[Row]:
    """The thread's messages before this run wrote to it, oldest first (id, role, content)."""
    return [
        Row(id=message_id, role=role, content=content)
        for message_id, role, content in _HISTORY.rows(
            conn, {"thread_id": thread_id, "run_id": run_id}
        )
    ]


def run_steps(conn: Connection, run_id: str) -> list[Row]:
    return [
        as_row(found, _STEP_ATTRS)
        for found in conn.execute(
            select(STEPS).where(STEPS.c.run_id == run_id).order_by(STEPS.c.seq)
        ).mappings()
    ]


def messages_by_id(conn: Connection, ids: Sequence[str]) -> dict[str, Row]:
    if not ids:
        return {}
    rows = conn.execute(select(MESSAGES).where(MESSAGES.c.id.in_(list(ids)))).mappings()
    return {found["id"]: as_row(found, _MESSAGE_ATTRS) for found in rows}


def drop_unfinished_turn(conn: Connection, run: Row) -> None:
    """Delete what an interrupted turn left: its steps and messages (they are made again)."""
    unfinished = [
        s for s in run_steps(conn, run.id) if (s.internal or {}).get("turn", -1) >= run.turns
    ]
    messages = [
        s.step_details["message_creation"]["message_id"]
        for s in unfinished
        if s.type == "message_creation"
    ]
    conn.execute(
        delete(MESSAGES).where(
            MESSAGES.c.run_id == run.id,
            or_(MESSAGES.c.id.in_(messages), MESSAGES.c.status == "in_progress"),
        )
    )
    if unfinished:
        conn.execute(delete(STEPS).where(STEPS.c.id.in_([s.id for s in unfinished])))
