"""SQL statements and commits per run, counted inside the real server (no app changes).

    uv run python -m bench.sql_count [--db sqlite|postgres|both] [--runs 100]

The server is `opengrove serve` started through `_serve` below, which first registers
SQLAlchemy listeners on the Engine class (every engine the app creates), and a wrapper of
`app.prepared._run` (hot-path statements sent past SQLAlchemy's execution), that count
statements by verb + table, executemany rows, and commits; SIGUSR1 dumps the counters to
a JSON file. The driver runs the same streamed runs as bench.runs_bench (thread + run in one
`POST /v1/threads/runs`, upstream delay 0) at concurrency 1 and 50 and prints the deltas per
run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.runs_bench import (
    INSTRUCTIONS,
    MODEL,
    PG_URL,
    Client,
    drive,
    server_env,
    server_stream_run,
)
from bench.upstream import Upstream
from tests.databases import fresh_database
from tests.server_process import free_port


def _classify(statement: str) -> str:
    s = " ".join(statement.split())
    verb = s.split(" ", 1)[0].upper()
    if verb == "INSERT":
        m = re.match(r"INSERT INTO (\S+)", s, re.I)
    elif verb == "UPDATE":
        m = re.match(r"UPDATE (\S+)", s, re.I)
    elif verb == "DELETE":
        m = re.match(r"DELETE FROM (\S+)", s, re.I)
    else:
        m = re.search(r"\bFROM (\S+)", s, re.I)
        if "pg_notify" in s:
            return "SELECT pg_notify"
    table = m.group(1).strip('"') if m else "?"
    if verb == "UPDATE" and table == "runs":
        # which code path: the executor's claim, state.transition, or an ORM flush of a dirty Run
        if re.search(r"IN \(SELECT", s, re.I):
            return "UPDATE runs (claim)"
        if re.search(r"runs\.status IN|AND \(?runs\.status = ", s, re.I):
            return "UPDATE runs (transition)"
        return "UPDATE runs (ORM flush of dirty Run)"
    return f"{verb} {table}"


def _serve() -> None:
    """Entry point of the counting server process: listeners, then `opengrove serve`."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    counts: collections.Counter[str] = collections.Counter()
    dump_path = Path(os.environ["SQL_COUNT_DUMP"])

    @event.listens_for(Engine, "before_cursor_execute")
    def _count(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool):
        key = _classify(statement)
        counts[f"stmt: {key}"] += 1
        counts["stmt: total"] += 1

    @event.listens_for(Engine, "commit")
    def _commit(conn: Any) -> None:
        counts["commits"] += 1

    # The hot path's statements go to the driver's cursor directly (app.prepared), past
    # SQLAlchemy's events: counted where they are sent.
    import app.prepared

    send = app.prepared._run

    def _counted_run(conn: Any, sql: str, values: Any, many: bool) -> Any:
        _count(conn, None, sql, values, None, many)
        return send(conn, sql, values, many)

    app.prepared._run = _counted_run

    # PostgreSQL: `transact` sends BEGIN and COMMIT itself, only when it must
    # (app.prepared.deferring), past SQLAlchemy's commit event.
    unit = app.prepared._UnitOfWork
    begin, end = unit.begin, unit.end

    def _counted_begin(self: Any) -> None:
        if not self.begun:
            counts["stmt: BEGIN"] += 1
        begin(self)

    def _counted_end(self: Any, failed: bool) -> None:
        end(self, failed)
        if self.begun and not failed:
            counts["commits"] += 1

    unit.begin = _counted_begin  # type: ignore[method-assign]
    unit.end = _counted_end  # type: ignore[method-assign]

    # asyncpg: a statement not in the connection's cache is prepared first (its own round
    # trip: Parse/Describe) before it executes.
    import asyncpg

    prepare = asyncpg.Connection.prepare

    async def _counted_prepare(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["driver: prepare (an extra round trip)"] += 1
        return await prepare(self, *args, **kwargs)

    asyncpg.Connection.prepare = _counted_prepare  # type: ignore[method-assign]

    from sqlalchemy.pool import Pool

    @event.listens_for(Pool, "connect")
    def _connected(*_: Any) -> None:
        counts["driver: new connection"] += 1

    def _dump(*_: Any) -> None:
        tmp = dump_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(counts))
        tmp.replace(dump_path)

    signal.signal(signal.SIGUSR1, _dump)
    from app.cli import main

    sys.exit(main(sys.argv[2:]))


def snapshot(proc: subprocess.Popen[bytes], path: Path) -> collections.Counter[str]:
    path.unlink(missing_ok=True)
    proc.send_signal(signal.SIGUSR1)
    for _ in range(100):
        if path.exists():
            return collections.Counter(json.loads(path.read_text()))
        time.sleep(0.05)
    raise RuntimeError("no counter dump")


def measure(db_name: str, runs: int, upstream: Upstream, tmp: Path) -> dict[str, Any]:
    work = tmp / db_name
    (work / "db").mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("OPENGROVE_TEST_DATABASE_URL")
    if db_name == "postgres":
        os.environ["OPENGROVE_TEST_DATABASE_URL"] = saved or PG_URL
    else:
        os.environ.pop("OPENGROVE_TEST_DATABASE_URL", None)
    dump = work / "counts.json"
    out: dict[str, Any] = {}
    try:
        with fresh_database(work / "db") as url:
            env = {
                **os.environ,
                **server_env(url, upstream, work / "server"),
                "SQL_COUNT_DUMP": str(dump),
            }
            port = free_port()
            log = (work / "server.log").open("ab")
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.sql_count", "_serve", "serve", "--host",
                 "127.0.0.1", "--port", str(port), "--data-dir", str(work / "server")],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            base = f"http://127.0.0.1:{port}"
            try:
                for _ in range(600):
                    try:
                        if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if proc.poll() is not None:
                        raise RuntimeError((work / "server.log").read_text())
                    time.sleep(0.1)
                out = asyncio.run(_load(proc, dump, base, runs))
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    finally:
        if saved is None:
            os.environ.pop("OPENGROVE_TEST_DATABASE_URL", None)
        else:
            os.environ["OPENGROVE_TEST_DATABASE_URL"] = saved
    return out


async def _load(proc: subprocess.Popen[bytes], dump: Path, base: str, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with Client("aiohttp") as client:
        status, assistant = await client.request(
            "POST", f"{base}/v1/assistants", {"model": MODEL, "instructions": INSTRUCTIONS}
        )
        assert status == 200, assistant
        aid = assistant["id"]

        def run() -> Any:
            return server_stream_run(client, base, aid)

        pids: dict[str, int | None] = {}
        await drive("warm", run, 10, 30, 60, pids)
        await asyncio.sleep(1.5)  # let idle loops settle
        for conc in (1, 50):
            before = snapshot(proc, dump)
            phase = await drive(f"c{conc}", run, conc, runs, 120, pids)
            after = snapshot(proc, dump)
            n = len(phase.ok) or 1
            out[conc] = ({k: (after[k] - before[k]) / n for k in after}, len(phase.ok), phase.wall)
    return out


def main(argv: list[str] | None = None) -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        _serve()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args(argv)
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="opengrove-sqlcount-") as tmp_name:
        tmp = Path(tmp_name)
        upstream = Upstream(tmp / "upstream.log").start()
        try:
            for db in dbs:
                results[db] = measure(db, args.runs, upstream, tmp)
        finally:
            upstream.stop()
    cols = [(db, conc) for db in dbs for conc in (1, 50)]
    keys = sorted({k for db, c in cols for k in results[db][c][0]}, key=lambda k: (k[:4], k))
    print(f"per completed run (streamed thread+run, upstream delay 0, {args.runs} runs):")
    print(f"{'':44}" + "".join(f"{f'{db} c={c}':>14}" for db, c in cols))
    for k in keys:
        vals = [results[db][c][0].get(k, 0.0) for db, c in cols]
        if max(vals) >= 0.05:
            print(f"{k[:44]:44}" + "".join(f"{v:14.2f}" for v in vals))
    print(f"{'runs ok / wall s':44}" + "".join(
        f"{f'{results[db][c][1]}/{results[db][c][2]:.1f}s':>14}" for db, c in cols
    ))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
