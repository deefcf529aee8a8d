"""Long run: 100k runs on SQLite with event-log pruning on; database size and server RSS must
be flat after the first 10k runs.

    ./dev python -m bench.longrun_bench [--runs 100000] [--concurrency 16]
        [--report-every 10000] [--baseline 10000] [--retention 30] [--keep-threads 5000]
        [--tolerance 10]

Processes, all on 127.0.0.1:
  * the fake OpenAI upstream, standalone (bench/upstream.py), no token delay: each run's
    answer (the echo of a 12-word message) streams at once;
  * one `opengrove serve` on a fresh SQLite data dir, with
    OPENGROVE_EVENT_RETENTION_SECONDS=--retention: the housekeeping pass (every minute)
    deletes the event logs of runs that ended and are older than that. Compaction, the
    stream send timeout and the shared log watcher are at their defaults (on).
  * this client: `--concurrency` workers, each a closed loop of streamed runs (POST
    /v1/threads/runs, thread and run in one request, stream=true, read to `done`). Like an
    app that keeps its latest conversations, it deletes a thread once `--keep-threads` newer
    ones exist: the users' data the database holds is a window of constant size (whatever the
    rate), so anything that grows past it is the server's own.

Every `--report-every` runs it prints: runs done, runs/s since the last report, the database's
bytes (the file, its WAL, pages on the freelist), rows in run_events, runs and threads, and the
server's RSS. At the end, the report at `--baseline` runs (10k: the window has filled by then)
against the last; the exit status is 1 if the database or the RSS grew by more than
`--tolerance` percent between them, or if any run failed.

Every loop is bounded by the run count and a deadline (--max-minutes); processes and the temp
dir are cleaned up.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.runs_bench import MODEL, Client, server_env
from bench.soak_bench import rss_mb
from bench.upstream import Upstream
from tests.server_process import ServerProcess

USER_TEXT = "one two three four five six seven eight nine ten eleven twelve"


@dataclass
class Report:
    runs: int
    elapsed: float
    runs_per_s: float
    db_bytes: int
    wal_bytes: int
    free_bytes: int
    run_events: int
    runs_rows: int
    threads: int
    rss_mb: float

    def line(self) -> str:
        mb = 1024 * 1024
        return (
            f"{self.runs:>8,} runs {self.elapsed:7.0f} s {self.runs_per_s:6.1f} runs/s | "
            f"db {self.db_bytes / mb:7.1f} MB (wal {self.wal_bytes / mb:5.1f}, free "
            f"{self.free_bytes / mb:5.1f}) | rows: run_events {self.run_events:>7,} runs "
            f"{self.runs_rows:>7,} threads {self.threads:>6,} | RSS {self.rss_mb:6.1f} MB"
        )


def measure(db_path: Path, pid: int, runs: int, elapsed: float, rate: float) -> Report:
    def size(path: Path) -> int:
        return path.stat().st_size if path.exists() else 0

    # A short read-only look (it must not hold a snapshot that keeps the WAL from resetting).
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        counts = [
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("run_events", "runs", "threads")
        ]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    return Report(
        runs=runs,
        elapsed=elapsed,
        runs_per_s=rate,
        db_bytes=size(db_path),
        wal_bytes=size(db_path.with_name(db_path.name + "-wal")),
        free_bytes=free * page,
        run_events=counts[0],
        runs_rows=counts[1],
        threads=counts[2],
        rss_mb=rss_mb(pid),
    )


async def streamed_run(client: Client, base: str, assistant_id: str) -> tuple[str | None, str]:
    """(thread id, how it ended: "completed" or what went wrong)."""
    body = {
        "assistant_id": assistant_id,
        "thread": {"messages": [{"role": "user", "content": USER_TEXT}]},
        "stream": True,
    }
    thread_id: str | None = None
    ending = "stream ended without thread.run.completed"
    try:
        async with client.stream_lines(f"{base}/v1/threads/runs", body) as (status, lines):
            if status != 200:
                return None, f"HTTP {status}"
            async for line in lines:
                if thread_id is None and line.startswith("data: {"):
                    thread_id = orjson.loads(line[6:])["id"]  # thread.created comes first
                elif line.startswith("event: thread.run.") and line[18:] in (
                    "completed",
                    "failed",
                    "cancelled",
                    "expired",
                    "incomplete",
                ):
                    ending = line[18:]
    except Exception as exc:  # a dropped connection is a failure to count, not to raise
        return thread_id, type(exc).__name__
    return thread_id, ending


async def drive(
    base: str, pid: int, db_path: Path, args: argparse.Namespace
) -> tuple[list[Report], collections.Counter[str]]:
    reports: list[Report] = []
    outcomes: collections.Counter[str] = collections.Counter()
    kept: collections.deque[str] = collections.deque()
    started = 0
    done = 0
    deadline = time.monotonic() + args.max_minutes * 60
    t0 = last_t = time.monotonic()
    last_done = 0
    async with Client("aiohttp") as client:
        status, assistant = await client.request("POST", f"{base}/v1/assistants", {"model": MODEL})
        assert status == 200, assistant

        async def worker() -> None:
            nonlocal started, done, last_t, last_done
            while started < args.runs and time.monotonic() < deadline:
                started += 1
                thread_id, ending = await streamed_run(client, base, assistant["id"])
                outcomes[ending] += 1
                if thread_id is not None:
                    kept.append(thread_id)
                # The oldest threads go now, by the workers that make new ones: deleting keeps
                # pace with creating.
                while len(kept) > args.keep_threads:
                    old = kept.popleft()
                    status, _ = await client.request("DELETE", f"{base}/v1/threads/{old}")
                    outcomes["thread deleted" if status == 200 else f"delete HTTP {status}"] += 1
                done += 1
                if done % args.report_every == 0:
                    now = time.monotonic()
                    rate = (done - last_done) / (now - last_t)
                    last_t, last_done = now, done
                    reports.append(measure(db_path, pid, done, now - t0, rate))
                    print(reports[-1].line(), flush=True)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return reports, outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--report-every", type=int, default=10_000)
    parser.add_argument("--baseline", type=int, default=10_000, help="runs: compare from here")
    parser.add_argument("--retention", type=float, default=30.0, help="seconds")
    parser.add_argument("--keep-threads", type=int, default=5000, help="threads")
    parser.add_argument("--tolerance", type=float, default=10.0, help="percent")
    parser.add_argument("--max-minutes", type=float, default=240.0)
    parser.add_argument("--keep-dir", action="store_true", help="leave the temp dir behind")
    args = parser.parse_args()

    tmp_name = tempfile.mkdtemp(prefix="opengrove-longrun-")
    tmp = Path(tmp_name)
    upstream = Upstream(tmp / "upstream.log", token_delay_ms=0).start()
    try:
        data_dir = tmp / "server"
        env = server_env("", upstream, data_dir)
        del env["DATABASE_URL"]  # the default: <data dir>/opengrove.db
        env.update(
            OPENGROVE_LOG_LEVEL="warning",
            OPENGROVE_RATE_LIMITS="false",
            OPENGROVE_EVENT_RETENTION_SECONDS=str(args.retention),
        )
        server = ServerProcess(data_dir, env=env).start()
        try:
            assert server.proc is not None
            print(
                f"longrun: {args.runs:,} streamed runs on SQLite, concurrency "
                f"{args.concurrency}; event logs pruned after {args.retention:g} s (housekeeping "
                f"every 60 s); the latest {args.keep_threads:,} threads kept, older ones deleted",
                flush=True,
            )
            reports, outcomes = asyncio.run(
                drive(server.base_url, server.proc.pid, data_dir / "opengrove.db", args)
            )
        finally:
            server.stop()
    finally:
        upstream.stop()
        if not args.keep_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")

    print(f"outcomes: {dict(outcomes)}")
    failed = sum(n for what, n in outcomes.items() if what not in ("completed", "thread deleted"))
    after = [r for r in reports if r.runs >= args.baseline]
    if len(after) < 2:
        print(f"fewer than two reports from {args.baseline:,} runs on: nothing to compare")
        return 1 if failed else 0
    first, last = after[0], after[-1]

    def growth(a: float, b: float) -> float:
        return (b - a) / a * 100 if a else float("inf")

    db_growth = growth(first.db_bytes + first.wal_bytes, last.db_bytes + last.wal_bytes)
    rss_growth = growth(first.rss_mb, last.rss_mb)
    print(
        f"from {first.runs:,} to {last.runs:,} runs: database (file + WAL) "
        f"{(first.db_bytes + first.wal_bytes) / 2**20:.1f} -> "
        f"{(last.db_bytes + last.wal_bytes) / 2**20:.1f} MB ({db_growth:+.1f} %), RSS "
        f"{first.rss_mb:.1f} -> {last.rss_mb:.1f} MB ({rss_growth:+.1f} %); run_events rows "
        f"{first.run_events:,} -> {last.run_events:,}"
    )
    flat = db_growth <= args.tolerance and rss_growth <= args.tolerance
    print("flat" if flat else f"GREW by more than {args.tolerance:g} %")
    return 0 if flat and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
