"""Soak: many streams open for minutes — no errors, flat memory.

    ./dev python -m bench.soak_bench [--streams 500] [--minutes 5] [--db sqlite|postgres]

The fake upstream (its own process) sends one token a second (`--token-delay-ms 1000`), so
each streamed run stays open for the whole answer (the default echo of a 12-word message);
`--streams` clients run a closed loop of streamed runs (`POST /v1/threads/runs`,
stream=true, read until `thread.run.completed`) for `--minutes`. Every 10 s it prints the
server's RSS, open streams, runs completed and errors; at the end: TTFT p50/p99, errors, and
the RSS drift from the first minute's median to the last minute's. Bounded by the deadline:
streams still open at the end are counted, not waited for beyond 90 s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.runs_bench import MODEL, PG_URL, Client, Result, pct, server_env
from bench.upstream import Upstream
from tests.databases import fresh_database
from tests.server_process import ServerProcess

USER_TEXT = "one two three four five six seven eight nine ten eleven twelve"


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """VmRSS, or RssAnon (the heap: what a leak grows) or RssFile (mapped files, e.g. the
    SQLite database read through its memory map, which grows with the database)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def stream_run(client: Client, base: str, assistant_id: str) -> Result:
    body = {
        "assistant_id": assistant_id,
        "thread": {"messages": [{"role": "user", "content": USER_TEXT}]},
        "stream": True,
    }
    t0 = time.perf_counter()
    res = Result()
    try:
        async with client.stream_lines(f"{base}/v1/threads/runs", body) as (status, lines):
            if status != 200:
                return Result(error=f"HTTP {status}")
            async for line in lines:
                if line == "event: thread.message.delta" and res.ttft is None:
                    res.ttft = time.perf_counter() - t0
                elif line == "event: thread.run.completed":
                    res.total = time.perf_counter() - t0
                elif line.startswith("event: thread.run.") and line[18:] in (
                    "failed",
                    "cancelled",
                    "expired",
                    "incomplete",
                ):
                    res.error = line[7:]
    except Exception as exc:  # a dropped connection is an error to count, not to raise
        return Result(error=type(exc).__name__)
    if res.total is None and res.error is None:
        res.error = "stream ended without thread.run.completed"
    return res


async def soak(server: ServerProcess, streams: int, minutes: float) -> dict[str, object]:
    base = server.base_url
    pid = server.proc.pid if server.proc else 0
    results: list[Result] = []
    rss: list[tuple[float, float]] = []
    anon: list[tuple[float, float]] = []
    open_streams = 0
    deadline = time.monotonic() + minutes * 60
    async with Client("aiohttp") as client:
        status, assistant = await client.request(
            "POST", f"{base}/v1/assistants", {"model": MODEL, "name": "soak"}
        )
        assert status == 200, assistant

        async def worker() -> None:
            nonlocal open_streams
            while time.monotonic() < deadline:
                open_streams += 1
                try:
                    results.append(await stream_run(client, base, assistant["id"]))
                finally:
                    open_streams -= 1

        async def monitor() -> None:
            start = time.monotonic()
            while time.monotonic() < deadline:
                await asyncio.sleep(10)
                elapsed = time.monotonic() - start
                rss.append((elapsed, rss_mb(pid)))
                anon.append((elapsed, rss_mb(pid, "RssAnon")))
                errors = sum(1 for r in results if r.error)
                print(
                    f"  t={elapsed:5.0f}s  RSS {rss[-1][1]:6.1f} MB (anonymous {anon[-1][1]:6.1f})"
                    f"  open streams {open_streams:4d}"
                    f"  runs done {len(results):6d}  errors {errors}",
                    flush=True,
                )

        tasks = [asyncio.create_task(worker()) for _ in range(streams)]
        watcher = asyncio.create_task(monitor())
        _, pending = await asyncio.wait(tasks, timeout=minutes * 60 + 90)
        watcher.cancel()
        for task in pending:
            task.cancel()
    first = [m for t, m in rss if t <= 60] or [rss[0][1]]
    last = [m for t, m in rss if t >= rss[-1][0] - 60] or [rss[-1][1]]
    anon_first = [m for t, m in anon if t <= 60] or [anon[0][1]]
    anon_last = [m for t, m in anon if t >= anon[-1][0] - 60] or [anon[-1][1]]
    ttfts = [r.ttft for r in results if r.ttft is not None]
    return {
        "runs": len(results),
        "errors": Counter(r.error for r in results if r.error),
        "unfinished": len(pending),
        "ttft_p50": pct(ttfts, 50) if ttfts else float("nan"),
        "ttft_p99": pct(ttfts, 99) if ttfts else float("nan"),
        "rss_first": statistics.median(first),
        "rss_last": statistics.median(last),
        "anon_first": statistics.median(anon_first),
        "anon_last": statistics.median(anon_last),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--token-delay-ms", type=float, default=1000.0)
    args = parser.parse_args()
    if args.db == "postgres":
        import os

        os.environ.setdefault("OPENGROVE_TEST_DATABASE_URL", PG_URL)
    with tempfile.TemporaryDirectory(prefix="opengrove-soak-") as tmp_name:
        tmp = Path(tmp_name)
        upstream = Upstream(tmp / "upstream.log", token_delay_ms=args.token_delay_ms).start()
        try:
            with fresh_database(tmp / "db") as url:
                (tmp / "db").mkdir(parents=True, exist_ok=True)
                env = server_env(url, upstream, tmp / "server")
                env["OPENGROVE_LOG_LEVEL"] = "warning"
                env["OPENGROVE_WORKER_CONCURRENCY"] = str(args.streams + 50)
                server = ServerProcess(tmp / "server", env=env).start()
                try:
                    print(
                        f"soak: {args.streams} streams for {args.minutes} min on {args.db}, "
                        f"upstream {args.token_delay_ms:.0f} ms per token"
                    )
                    out = asyncio.run(soak(server, args.streams, args.minutes))
                finally:
                    server.stop()
        finally:
            upstream.stop()
    drift = (out["rss_last"] - out["rss_first"]) / out["rss_first"] * 100  # type: ignore[operator]
    anon_drift = (out["anon_last"] - out["anon_first"]) / out["anon_first"] * 100  # type: ignore[operator]
    print(
        f"runs completed {out['runs']}, errors {dict(out['errors'])}, "  # type: ignore[call-overload]
        f"unfinished at the deadline {out['unfinished']}\n"
        f"TTFT p50 {out['ttft_p50'] * 1000:.0f} ms, p99 {out['ttft_p99'] * 1000:.0f} ms\n"
        f"RSS first minute {out['rss_first']:.1f} MB, last minute {out['rss_last']:.1f} MB "
        f"({drift:+.1f} %); anonymous {out['anon_first']:.1f} MB, {out['anon_last']:.1f} MB "
        f"({anon_drift:+.1f} %)"
    )


if __name__ == "__main__":
    main()
