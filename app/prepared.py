"""Hot-path statements, compiled once per dialect and run on the driver's own cursor.

SQLAlchemy spends about 90 µs (SQLite) to 170 µs (PostgreSQL through asyncpg) of CPU per
statement above the driver: it builds the statement, its cache key, an execution context and
a result object, every time. A run makes some twenty statements of a few fixed shapes, so
those are built once here, with named parameters, compiled once per dialect, and sent as
their compiled text through the DBAPI cursor of the caller's connection — inside the
caller's transaction, with the dialect's own bind and result processors (JSON), and with
driver errors raised as SQLAlchemy's (`IntegrityError` …) as `Connection.execute` would.

Differences from `Connection.execute`, on purpose: a Python `None` is always SQL NULL (also
for JSON columns, where SQLAlchemy would store JSON `null`), and column defaults are the
table's Python-side scalars and callables only (no server defaults fetched back).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import JSON, Column, Connection, Table, bindparam, insert, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable
from sqlalchemy.util import await_only

REQUIRED = object()  # a parameter the caller must give


@dataclass(frozen=True)
class _Form:
    """A statement as one dialect runs it."""

    sql: str
    names: tuple[str, ...]  # parameter names, in the order the text takes them
    fixed: tuple[Any, ...]  # per parameter: its value when the caller gives none, or REQUIRED
    binds: tuple[Callable[[Any], Any] | None, ...]

    def values(self, given: Mapping[str, Any]) -> tuple[Any, ...]:
        """The positional parameters for one execution."""
        values = []
        for name, fixed, bind in zip(self.names, self.fixed, self.binds, strict=True):
            value = given.get(name, fixed)
            if value is REQUIRED:
                raise KeyError(f"parameter {name!r} missing")
            if isinstance(value, _Lazy):
                value = value.make(None)
            values.append(bind(value) if bind is not None and value is not None else value)
        return tuple(values)


def _run(
    conn: Connection, sql: str, values: Any, many: bool
) -> tuple[Sequence[Any] | None, list[Any], int]:
    """On the connection's DBAPI cursor, in its transaction: the result's description (None
    without a result), its rows, and the row count."""
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    dbapi = conn.dialect.loaded_dbapi
    cursor = dbapi_connection.cursor()
    try:
        if many:
            cursor.executemany(sql, values)
            return None, [], -1
        cursor.execute(sql, values)
        description = cursor.description
        return description, (cursor.fetchall() if description else []), cursor.rowcount
    except dbapi.Error as error:
        if conn.dialect.is_disconnect(error, dbapi_connection, cursor):
            conn.invalidate(error)
        raise DBAPIError.instance(sql, values, error, dbapi.Error) from error
    finally:
        cursor.close()


def _json_reader(loads: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def read(value: Any) -> Any:
        return None if value is None else loads(value)

    return read


def _result_columns(statement: Executable) -> Sequence[Any]:
    """What a SELECT selects or a DML statement returns."""
    return list(getattr(statement, "exported_columns", ()))


@dataclass(frozen=True)
class Outcome:
    rows: list[tuple[Any, ...]]
    rowcount: int


class Prepared:
    """One statement of a fixed shape. `column_keys`: the columns an INSERT or UPDATE sets
    (their parameters are named after them); other parameters are `bindparam`s by name."""

    def __init__(self, statement: Executable, column_keys: Sequence[str] | None = None) -> None:
        self.statement = statement
        self.column_keys = list(column_keys) if column_keys is not None else None
        self._forms: dict[str, _Form] = {}
        self._results: dict[str, tuple[Callable[[Any], Any] | None, ...]] = {}

    def execute(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Outcome:
        before_statement(conn, self.statement)  # held writes first; BEGIN if it must
        form = self._form(conn)
        values = form.values(params or {})
        description, rows, rowcount = _run(conn, form.sql, values, many=False)
        if description is None:
            return Outcome([], rowcount)
        results = self._results.get(conn.dialect.name)
        if results is None:
            results = self._results[conn.dialect.name] = self._result_processors(conn, description)
        processed = [(i, process) for i, process in enumerate(results) if process is not None]
        if not processed:
            return Outcome([tuple(row) for row in rows], rowcount)
        out = []
        for row in rows:
            values = list(row)
            for i, process in processed:
                values[i] = process(values[i])
            out.append(tuple(values))
        return Outcome(out, rowcount)

    def _result_processors(
        self, conn: Connection, description: Sequence[Any]
    ) -> tuple[Callable[[Any], Any] | None, ...]:
        """The dialect's processor per result column; some (asyncpg's numerics) need the
        driver's type code from the first result's description."""
        dialect = conn.dialect
        processors = []
        for column, described in zip(_result_columns(self.statement), description, strict=True):
            impl = column.type.dialect_impl(dialect)
            process = impl.result_processor(dialect, described[1])
            if process is not None and isinstance(impl, JSON):
                # A stored column is JSON text or NULL: its decoder straight, without the
                # dialect's two layers of wrappers per value (a page of messages has 80).
                process = _json_reader(dialect._json_deserializer or json.loads)  # type: ignore[attr-defined]
            processors.append(process)
        return tuple(processors)

    def execute_many(
        self, conn: Connection, params: Sequence[Mapping[str, Any]], *, hold: bool = True
    ) -> None:
        """The statement once per parameter set, as one DBAPI `executemany` (no results); an
        INSERT inside `deferring` joins the writes held there, unless `hold` is False (many
        rows: as one statement of that many parts, each count would be prepared anew)."""
        form = self._form(conn)
        unit = _unit(conn)
        if hold and unit is not None and self.statement.is_insert:  # type: ignore[attr-defined]
            table = self.statement.table.name  # type: ignore[attr-defined]
            for each in params:
                unit.hold(table, form.sql, form.values(each))
            return
        before_statement(conn, self.statement)
        _run(conn, form.sql, [form.values(each) for each in params], many=True)

    def defer(self, conn: Connection, params: Mapping[str, Any]) -> None:
        """`execute` for a write whose outcome nobody reads: inside `deferring` it waits for
        the transaction's next statement or its end, and goes with the writes held beside
        it; elsewhere it runs now."""
        unit = _unit(conn)
        table = self.statement.table.name  # type: ignore[attr-defined]
        if unit is None or not unit.may_hold(table, self.statement.is_update):  # type: ignore[attr-defined]
            self.execute(conn, params)
            return
        form = self._form(conn)
        unit.hold(table, form.sql, form.values(params))

    def guard(self, conn: Connection, params: Mapping[str, Any]) -> bool:
        """`execute` for a conditional UPDATE that decides the rest of its transaction: True
        if it matched a row. Inside `deferring`, as the unit's first write, it is held and
        assumed to match; the INSERTs held after it are written only if it does. Should it
        match nothing, `GuardMissed` is raised (at the unit's end, or its next statement)
        and nothing of the unit is written: the caller must catch it."""
        unit = _unit(conn)
        if unit is None or unit.held or unit.begun or unit.guard is not None:
            return self.execute(conn, params).rowcount > 0
        form = self._form(conn)
        unit.guard = (form.sql, form.values(params))
        unit.touched.add(self.statement.table.name)  # type: ignore[attr-defined]
        return True

    def rows(self, conn: Connection, params: Mapping[str, Any] | None = None) -> list[tuple]:
        return self.execute(conn, params).rows

    def scalar(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row, or None without rows."""
        rows = self.rows(conn, params)
        return rows[0][0] if rows else None

    def namespaces(
        self, conn: Connection, params: Mapping[str, Any] | None = None
    ) -> list[SimpleNamespace]:
        """The rows as namespaces, one attribute per selected column (by its key)."""
        keys = self.result_keys
        namespaces = []
        for row in self.rows(conn, params):
            namespace = SimpleNamespace()
            namespace.__dict__.update(zip(keys, row, strict=True))
            namespaces.append(namespace)
        return namespaces

    @property
    def result_keys(self) -> list[str]:
        return [column.key for column in _result_columns(self.statement)]

    def _form(self, conn: Connection) -> _Form:
        return self._forms.get(conn.dialect.name) or self._compile(conn)

    def _compile(self, conn: Connection) -> _Form:
        dialect = conn.dialect
        compiled = self.statement.compile(dialect=dialect, column_keys=self.column_keys)
        names = tuple(compiled.positiontup or ())
        table = getattr(self.statement, "table", None)
        columns = table.c if isinstance(table, Table) and self.column_keys is not None else {}
        fixed = []
        binds = []
        for name in names:
            parameter = compiled.binds[name]
            if name in (self.column_keys or ()):
                value = REQUIRED  # a column the caller sets
            elif name in columns:  # one SQLAlchemy added: it has a Python-side default
                value = _default(columns[name], self.statement.is_insert)  # type: ignore[attr-defined]
            elif parameter.required or parameter.value is None or callable(parameter.value):
                value = REQUIRED
            else:
                value = parameter.value  # a literal of the statement
            fixed.append(value)
            binds.append(parameter.type.dialect_impl(dialect).bind_processor(dialect))
        form = _Form(compiled.string, names, tuple(fixed), tuple(binds))
        self._forms[dialect.name] = form
        return form


def _default(column: Column[Any], inserting: bool) -> Any:
    """A column's Python-side default (INSERT) or onupdate value (UPDATE)."""
    default = column.default if inserting else column.onupdate
    if default is None:
        return None
    if getattr(default, "is_callable", False):
        return _Lazy(default.arg)  # type: ignore[attr-defined]
    return getattr(default, "arg", None)


class _Lazy:
    """A callable default, evaluated per execution. SQLAlchemy has wrapped it to take an
    execution context; the defaults here ignore it."""

    def __init__(self, make: Callable[[Any], Any]) -> None:
        self.make = make


# Shapes come from call sites (a table and the columns a caller sets), so there are few; the
# bound only guards against a caller whose column set varies without limit.
_CACHE: dict[Hashable, Prepared] = {}
MAX_SHAPES = 1000


def prepared(key: Hashable, build: Callable[[], Prepared]) -> Prepared:
    """The statement cached under `key` (its shape), built the first time."""
    found = _CACHE.get(key)
    if found is None:
        found = build()
        if len(_CACHE) < MAX_SHAPES:
            _CACHE[key] = found
    return found


def plain_insert(table: Table) -> Executable:
    """An INSERT that returns nothing (PostgreSQL's would return generated keys)."""
    return insert(table).inline()


def insert_row(conn: Connection, table: Table, values: Mapping[str, Any]) -> None:
    """INSERT one row of `values` (columns not named take their Python-side defaults); held
    with the other writes inside `deferring`."""
    keys = tuple(values)
    statement = prepared(("insert", table.name, keys), lambda: Prepared(plain_insert(table), keys))
    statement.defer(conn, values)


# ------------------------------------------------------------------------ deferred writes
# On PostgreSQL every statement is a round trip, and a round trip costs ~0.1 ms of CPU here
# (asyncpg, SQLAlchemy's adapter, the event loop): more than the statement. So `Database.
# transact` runs its work inside `deferring`, on a connection in autocommit mode:
#  * Writes whose outcome nobody reads (`Prepared.defer`) are held until the next statement
#    (any: prepared or through SQLAlchemy) or the end, then go together as ONE statement of
#    data-modifying CTEs. Order is kept: nothing runs before a write that came earlier.
#    Sub-statements of one statement share a snapshot: INSERTs of plain VALUES see nothing,
#    so any number may go together; an UPDATE would not see a row written beside it, so one
#    is held only if no write held with it touches its table (its rows were written by
#    earlier statements, or before). Foreign keys are checked at the end of the statement,
#    as they were at the end of each.
#  * The transaction begins only when it must: before a write or a locking read that runs
#    at once, or before held writes that more statements follow. Plain reads before that
#    run on their own (under READ COMMITTED each statement takes its own snapshot anyway),
#    and when all the writes end up in one statement there is no BEGIN and no COMMIT: one
#    statement is atomic by itself.
#  * A conditional UPDATE that comes first (`Prepared.guard`: a run's state transition) is
#    held too, as the guard of the writes held after it: they go as one statement, each
#    taking effect only if the guard matched a row, and the statement tells whether it did.
#    A run claimed, its event logged: one round trip, not BEGIN … COMMIT's four; a run
#    completed with its message, step and events: one, not seven.

_UNIT = "opengrove_unit_of_work"
_PLACEHOLDER = re.compile(r"\$(\d+)")


class GuardMissed(Exception):
    """A held guard (`Prepared.guard`) matched no row: nothing of its unit was written."""


def _if_guarded(sql: str) -> str:
    """A held write as the same write taking effect only if the guard `g` matched a row:
    `INSERT INTO t (…) VALUES (…)` as an INSERT … SELECT (the parameters carry their casts,
    so the types need no VALUES context), `UPDATE t SET … WHERE c` with `g` in its WHERE."""
    if sql.startswith("UPDATE "):
        head, found, condition = sql.partition(" WHERE ")
        assert found and " RETURNING " not in condition, sql
        return f"{head} WHERE ({condition}) AND EXISTS (SELECT FROM g)"
    head, found, values = sql.partition(") VALUES (")
    assert found and values.endswith(")"), sql
    return f"{head}) SELECT {values[:-1]} WHERE EXISTS (SELECT FROM g)"


def _renumbered(sql: str, offset: int) -> str:
    """`sql`'s parameters $1, $2 … as $(1 + offset) …, to follow another's in one statement."""
    return _PLACEHOLDER.sub(lambda found: f"${int(found.group(1)) + offset}", sql)


def _parameters(sql: str) -> int:
    return max((int(found) for found in _PLACEHOLDER.findall(sql)), default=0)


@functools.lru_cache(maxsize=1024)  # a unit's writes come in a few shapes: built once each
def _combined(guard: str | None, held: tuple[str, ...]) -> str:
    """Held writes as one statement of data-modifying CTEs, their parameters numbered on;
    with a guard, `g` first, each write taking effect only if it matched, and the statement
    returning how many rows it matched."""
    parts = [] if guard is None else [f"g AS ({guard} RETURNING 1)"]
    offset = 0 if guard is None else _parameters(guard)
    for i, sql in enumerate(held):
        part = sql if guard is None else _if_guarded(sql)
        parts.append(f"w{i} AS ({_renumbered(part, offset)})")
        offset += _parameters(sql)
    return (
        "WITH " + ", ".join(parts) + (" SELECT 1" if guard is None else " SELECT count(*) FROM g")
    )


def _plain_read(statement: Any) -> bool:
    """A SELECT that takes no row locks (runs the same outside a transaction)."""
    return bool(getattr(statement, "is_select", False)) and (
        getattr(statement, "_for_update_arg", None) is None
    )


class _UnitOfWork:
    """One `transact` on PostgreSQL: held INSERTs, and whether BEGIN has been sent."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.held: list[tuple[str, tuple[Any, ...]]] = []
        self.guard: tuple[str, tuple[Any, ...]] | None = None
        self.touched: set[str] = set()  # tables the held writes and the guard write to
        self.begun = False

    def may_hold(self, table: str, updating: bool) -> bool:
        return not updating or table not in self.touched

    def hold(self, table: str, sql: str, values: tuple[Any, ...]) -> None:
        self.held.append((sql, values))
        self.touched.add(table)

    def begin(self) -> None:
        if not self.begun:
            # On the driver itself: SQLAlchemy's connection stays in autocommit and knows
            # nothing of it (`deferring` ends it, whatever happens).
            try:
                await_only(self.conn.connection.driver_connection.execute("BEGIN"))
            except BaseException:
                self.conn.invalidate()  # past SQLAlchemy's disconnect detection: a new one
                raise
            self.begun = True

    def before(self, plain_read: bool) -> None:
        """Another statement is about to run: what must come first."""
        if self.held or self.guard is not None:
            self.begin()  # the held writes and what follows them: one transaction
            self._run_guard()
            self.flush()
        elif not plain_read:
            self.begin()

    def _run_guard(self) -> None:
        """The held guard on its own, in the transaction (more statements follow it)."""
        guard, self.guard = self.guard, None
        self.touched.clear()
        if guard is not None and _run(self.conn, *guard, many=False)[2] == 0:
            raise GuardMissed()  # the caller's unit ends rolled back

    def _flush_guarded(self) -> None:
        """The guard and the writes held after it, as one statement (the unit's last)."""
        assert self.guard is not None
        (sql, values), held = self.guard, self.held
        self.guard, self.held = None, []
        self.touched.clear()
        statement = _combined(sql, tuple(held_sql for held_sql, _ in held))
        values += tuple(value for _, each in held for value in each)
        if _run(self.conn, statement, values, many=False)[1][0][0] == 0:
            raise GuardMissed()

    def flush(self) -> None:
        if self.guard is not None:
            self._flush_guarded()
            return
        held, self.held = self.held, []
        self.touched.clear()
        if not held:
            return
        if len(held) == 1:
            _run(self.conn, *held[0], many=False)
            return
        statement = _combined(None, tuple(sql for sql, _ in held))
        _run(self.conn, statement, tuple(value for _, each in held for value in each), many=False)

    def end(self, failed: bool) -> None:
        if not failed:
            try:
                self.flush()
            except BaseException:
                self._finish("ROLLBACK")
                raise
        self._finish("ROLLBACK" if failed else "COMMIT")

    def _finish(self, command: str) -> None:
        if self.conn.invalidated:
            return  # closed, and its transaction with it
        driver = self.conn.connection.driver_connection
        if self.begun or driver.is_in_transaction():
            try:
                await_only(driver.execute(command))
            except BaseException:
                # Never back to the pool inside a transaction.
                self.conn.invalidate()
                raise


def _unit(conn: Connection) -> _UnitOfWork | None:
    return conn.info.get(_UNIT)


@contextlib.contextmanager
def deferring(conn: Connection) -> Iterator[None]:
    """The unit of work above, on `conn` (PostgreSQL, in autocommit mode): writes held,
    the transaction begun when needed; committed on leaving, rolled back on an error."""
    if conn.dialect.name != "postgresql":
        yield
        return
    unit = conn.info[_UNIT] = _UnitOfWork(conn)
    try:
        yield
    except BaseException:
        unit.end(failed=True)
        raise
    else:
        unit.end(failed=False)
    finally:
        conn.info.pop(_UNIT, None)


def before_statement(conn: Connection, statement: Any, *_: Any) -> None:
    """Inside `deferring`: what must run before `statement` does (also a SQLAlchemy
    `before_execute` listener, for statements that go through SQLAlchemy)."""
    unit = _unit(conn)
    if unit is not None:
        unit.before(_plain_read(statement))


def _update(table: Table, key: str, keys: tuple[str, ...]) -> Prepared:
    def build() -> Prepared:
        return Prepared(update(table).where(table.c[key] == bindparam("where_key")), keys)

    return prepared(("update", table.name, key, keys), build)


def update_rows(
    conn: Connection, table: Table, key: str, key_value: Any, values: Mapping[str, Any]
) -> int:
    """UPDATE the rows whose `key` column equals `key_value`; the number updated."""
    statement = _update(table, key, tuple(values))
    return statement.execute(conn, {**values, "where_key": key_value}).rowcount


def defer_update(
    conn: Connection, table: Table, key: str, key_value: Any, values: Mapping[str, Any]
) -> None:
    """`update_rows` for an UPDATE whose outcome nobody reads: held with the other writes
    inside `deferring` where it may be (see above)."""
    _update(table, key, tuple(values)).defer(conn, {**values, "where_key": key_value})
