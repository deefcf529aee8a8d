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

from sqlalchemy import Connection, Table, delete, insert, or_, select, update

from app.db import one_of
from app.observability.metrics import count_run_status
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
    # NULLs left out: a None for a JSON column would be stored as JSON null.
    columns = {
        name: value for name, value in row_values(run, _RUN_ATTRS).items() if value is not None
    }
    conn.execute(insert(RUNS), [columns])


def load_run(conn: Connection, run_id: str) -> Row | None:
    found = conn.execute(select(RUNS).where(RUNS.c.id == run_id)).mappings().first()
    return as_row(found, _RUN_ATTRS) if found is not None else None


def transition(conn: Connection, run: Row, to: str, fields: dict[str, Any]) -> bool:
    """The state machine's conditional UPDATE (see `app.runs.state`), on a plain row."""
    values, allowed = transition_values(to, fields)
    updated = conn.execute(
        update(RUNS).where(RUNS.c.id == run.id, one_of(RUNS.c.status, allowed)).values(**values)
    )
    if updated.rowcount == 0:
        fresh = load_run(conn, run.id)
        if fresh is not None:
            vars(run).update(vars(fresh))
        return False
    for name, value in values.items():
        setattr(run, _RUN_ATTRS[name], value)
    count_run_status(to)
    return True


def update_run(conn: Connection, run_id: str, values: dict[str, Any]) -> None:
    conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(**values))


def insert_message(conn: Connection, message: Row) -> None:
    conn.execute(insert(MESSAGES), [row_values(message, _MESSAGE_ATTRS)])


def insert_step(conn: Connection, step: Row) -> None:
    conn.execute(insert(STEPS), [row_values(step, _STEP_ATTRS)])


def update_message(conn: Connection, message: Row, names: Iterable[str]) -> None:
    conn.execute(
        update(MESSAGES)
        .where(MESSAGES.c.id == message.id)
        .values({name: getattr(message, _MESSAGE_ATTRS[name]) for name in names})
    )


def update_step(conn: Connection, step: Row, names: Iterable[str]) -> None:
    conn.execute(
        update(STEPS)
        .where(STEPS.c.id == step.id)
        .values({name: getattr(step, _STEP_ATTRS[name]) for name in names})
    )


def history(conn: Connection, thread_id: str, run_id: str) -> list[Row]:
    """The thread's messages before this run wrote to it, oldest first (id, role, content)."""
    return [
        Row(id=message_id, role=role, content=content)
        for message_id, role, content in conn.execute(
            select(MESSAGES.c.id, MESSAGES.c.role, MESSAGES.c.content)
            .where(
                MESSAGES.c.thread_id == thread_id,
                or_(MESSAGES.c.run_id.is_(None), MESSAGES.c.run_id != run_id),
            )
            .order_by(MESSAGES.c.seq)
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
