"""CRUD benchmark: create a message + list 20 messages, concurrency 50, one server process.

    uv run python -m bench.crud_bench [--db sqlite|postgres|both] [--quick] [--auth off|on|both]
    uv run --with py-spy python -m bench.crud_bench --profile /tmp/prof   # + py-spy of round 1

Target (issue 8): >= 1,500 req/s with p99 <= 100 ms, on SQLite and on PostgreSQL.
Target (issue 9): auth + rate limiting add <= 0.3 ms per request. `--auth both` runs each
database twice, side by side on fresh databases: without a key (no key exists: anonymous, no
limits) and with one (every request verified and rate limited, the limits set far above the
load); their rounds alternate, and the difference of the medians of the rounds is reported:
server CPU ms per request (the figure: it does not depend on load) and p50 latency.

Two processes on 127.0.0.1: the real server (`opengrove serve`, tests.server_process) on a
fresh database (tests/databases.py: a SQLite file, or a fresh PostgreSQL database dropped
afterwards), and this client: keep-alive connections through bench.lean_http (`--client
aiohttp` for aiohttp; see bench.runs_bench.Client for why the client's CPU matters).

Setup: one thread per worker, each seeded with 20 messages (so every list is a full page).
Load: a closed loop of 50 workers; each repeats, on its own thread,
    POST /v1/threads/{id}/messages            (a user message, ~60 characters)
    GET  /v1/threads/{id}/messages?limit=20   (newest first, the SDK's default order)
Every HTTP request counts as one request. A round is bounded by a request count and a
deadline. Reported: median req/s of the rounds, p50/p99 latency over all rounds (and per
verb), server CPU milliseconds per request (from /proc/<pid>/stat), errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.auth.keys import create_key
from app.db import Database
from app.migrate import upgrade_database
from bench.runs_bench import PG_URL, Client, Profiler, cpu_seconds, ms, pct
from tests.databases import fresh_database
from tests.server_process import ServerProcess

CONCURRENCY = 50
PAGE = 20
TEXT = "The quick brown fox jumps over the lazy dog, then lists it all."
# With a key: limits on, far above what a round sends, so every request pays for the
# limiter and none is refused.
HIGH_LIMITS = "messages=100000000,reads=100000000,writes=100000000"


@dataclass
class Round:
    name: str
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"create": [], "list": []})
    errors: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    timed_out: bool = False

    @property
    def n_ok(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    @property
    def n(self) -> int:
        return self.n_ok + sum(self.errors.values())

    @property
    def rate(self) -> float:
        return self.n_ok / self.wall if self.wall else 0.0


async def request(client: Client, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    return await client.request(method, url, body)


async def setup_threads(session: Client, base: str, n: int) -> list[str]:
    async def one() -> str:
        status, thread = await request(session, "POST", f"{base}/v1/threads", {})
        if status != 200:
            raise RuntimeError(f"creating a thread: HTTP {status} {thread}")
        for i in range(PAGE):
            body = {"role": "user", "content": f"seed {i}: {TEXT}"}
            status, msg = await request(
                session, "POST", f"{base}/v1/threads/{thread['id']}/messages", body
            )
            if status != 200:
                raise RuntimeError(f"seeding a thread: HTTP {status} {msg}")
        return thread["id"]

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def drive(
    name: str,
    session: Client,
    base: str,
    threads: list[str],
    total: int,
    time_limit: float,
    pid: int,
) -> Round:
    """Closed loop: one worker per thread, alternating create and list, `total` requests."""
    rnd = Round(name)
    todo = iter(range(total))
    deadline = time.perf_counter() + time_limit
    body = {"role": "user", "content": TEXT}

    async def worker(thread_id: str) -> None:
        create_url = f"{base}/v1/threads/{thread_id}/messages"
        list_url = f"{create_url}?limit={PAGE}"
        kind = "create"
        for _ in todo:
            if time.perf_counter() > deadline:
                rnd.timed_out = True
                return
            t0 = time.perf_counter()
            try:
                if kind == "create":
                    status, out = await request(session, "POST", create_url, body)
                    ok = status == 200 and out.get("object") == "thread.message"
                else:
                    status, out = await request(session, "GET", list_url)
                    ok = status == 200 and len(out.get("data", ())) == PAGE
                if ok:
                    rnd.latencies[kind].append(time.perf_counter() - t0)
                else:
                    err = f"{kind} HTTP {status}"
                    if isinstance(out, dict) and isinstance(out.get("error"), dict):
                        err += f": {str(out['error'].get('message'))[:80]}"
                    rnd.errors[err] = rnd.errors.get(err, 0) + 1
            except Exception as exc:  # a failed request is a data point
                err = f"{kind} {type(exc).__name__}"
                rnd.errors[err] = rnd.errors.get(err, 0) + 1
            kind = "list" if kind == "create" else "create"

    cpu0, ccpu0 = cpu_seconds(pid), cpu_seconds()
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(worker(t)) for t in threads]
    _, pending = await asyncio.wait(tasks, timeout=time_limit + 30)
    for task in pending:
        task.cancel()
        rnd.timed_out = True
    await asyncio.gather(*pending, return_exceptions=True)
    rnd.wall = time.perf_counter() - t0
    rnd.server_cpu = cpu_seconds(pid) - cpu0
    rnd.client_cpu = cpu_seconds() - ccpu0
    return rnd


@dataclass
class Config:
    rounds: int
    total: int
    time_limit: float
    profile_dir: Path | None
    concurrency: int = CONCURRENCY
    client: str = "lean"


def client_session(kind: str, key: str | None) -> Client:
    return Client(kind, headers={"Authorization": f"Bearer {key}"} if key else None)


def print_round(label: str, i: int, rnd: Round) -> None:
    lat = rnd.latencies["create"] + rnd.latencies["list"]
    print(
        f"  [{label}] round {i + 1}: {rnd.n_ok}/{rnd.n} in {rnd.wall:.2f}s = "
        f"{rnd.rate:.0f} req/s  p50 {ms(pct(lat, 50)).strip()} "
        f"p99 {ms(pct(lat, 99)).strip()} ms  server CPU "
        f"{rnd.server_cpu * 1000 / max(rnd.n, 1):.2f} ms/req"
        f"{'  errors: ' + str(rnd.errors) if rnd.errors else ''}",
        flush=True,
    )


@dataclass
class Target:
    """One server under test: `key` None is anonymous (no key exists on its database)."""

    label: str
    server: ServerProcess
    key: str | None
    rounds: list[Round] = field(default_factory=list)

    def result(self) -> dict[str, Any]:
        log = self.server.log()
        return {
            "db": self.label,
            "rounds": self.rounds,
            "tracebacks": log.count("Traceback"),
            "error_lines": len(re.findall(r" (ERROR|CRITICAL) ", log)),
        }


async def bench_targets(cfg: Config, targets: list[Target]) -> list[dict[str, Any]]:
    """Rounds of each target in turn (round i: A then B, round i+1: B then A), so drifting
    background load on the machine falls on both alike."""
    async with contextlib.AsyncExitStack() as stack:
        work = []
        for target in targets:
            assert target.server.proc is not None
            pid = target.server.proc.pid
            session = await stack.enter_async_context(client_session(cfg.client, target.key))
            base = target.server.base_url
            threads = await setup_threads(session, base, cfg.concurrency)
            work.append((target, session, base, threads, pid))
        for target, session, base, threads, pid in work:
            warm = await drive("warm", session, base, threads, cfg.total // 3, cfg.time_limit, pid)
            if warm.errors:
                print(f"  [{target.label}] warm-up errors: {warm.errors}", flush=True)
        for i in range(cfg.rounds):
            for target, session, base, threads, pid in work if i % 2 == 0 else work[::-1]:
                profiler = Profiler(
                    cfg.profile_dir / target.label if cfg.profile_dir else None,
                    pid,
                    {"round1"},
                    [],
                )
                profiler.start(f"round{i + 1}")
                rnd = await drive(
                    f"round {i + 1}", session, base, threads, cfg.total, cfg.time_limit, pid
                )
                profiler.stop()
                target.rounds.append(rnd)
                print_round(target.label, i, rnd)
    return [target.result() for target in targets]


async def issue_key(url: str) -> str:
    """Migrate and issue a key before the server starts (it then needs one at once)."""
    await upgrade_database(url)
    db = Database(url)
    try:
        async with db.sessionmaker() as session:
            return (await create_key(session, "bench"))[1]
    finally:
        await db.dispose()


def run_db(cfg: Config, db_name: str, tmp: Path, modes: list[bool]) -> list[dict[str, Any]]:
    """One server per mode (False: no key, True: with a key), each on a fresh database."""
    saved = os.environ.get("OPENGROVE_TEST_DATABASE_URL")
    if db_name == "postgres":
        os.environ["OPENGROVE_TEST_DATABASE_URL"] = saved or PG_URL
    else:
        os.environ.pop("OPENGROVE_TEST_DATABASE_URL", None)
    targets: list[Target] = []
    try:
        with contextlib.ExitStack() as stack:
            for auth in modes:
                label = f"{db_name}+key" if auth else db_name
                work = tmp / label
                (work / "db").mkdir(parents=True, exist_ok=True)
                url = stack.enter_context(fresh_database(work / "db"))
                key = asyncio.run(issue_key(url)) if auth else None
                env = {"DATABASE_URL": url}
                if auth:
                    env["OPENGROVE_RATE_LIMIT_OVERRIDES"] = HIGH_LIMITS
                server = ServerProcess(work / "server", env=env)
                stack.callback(server.stop)
                server.start()
                targets.append(Target(label, server, key))
            try:
                return asyncio.run(bench_targets(cfg, targets))
            except BaseException:
                for target in targets:
                    print(target.server.log()[-4000:], file=sys.stderr)
                raise
    finally:
        if saved is None:
            os.environ.pop("OPENGROVE_TEST_DATABASE_URL", None)
        else:
            os.environ["OPENGROVE_TEST_DATABASE_URL"] = saved


def report(cfg: Config, results: list[dict[str, Any]]) -> None:
    line = "-" * 112
    print()
    print(line)
    print(
        f"CRUD — concurrency {cfg.concurrency}, each worker alternating POST message / GET "
        f"{PAGE} messages on its own thread; {cfg.total} requests x {cfg.rounds} rounds"
    )
    print("target: >= 1500 req/s, p99 <= 100 ms. Latencies over all rounds, in ms.")
    print(line)
    print(
        f"{'db':12} | {'req/s median':>12} {'(min-max)':>13} | {'p50':>6} {'p99':>6} | "
        f"{'create p50':>10} {'p99':>6} | {'list p50':>8} {'p99':>6} | {'ok/total':>11} | "
        f"{'CPU ms/req srv cli':>18}"
    )
    for res in results:
        rounds: list[Round] = res["rounds"]
        rates = [r.rate for r in rounds]
        mid = sorted(rounds, key=lambda r: r.rate)[len(rounds) // 2]
        create = [x for r in rounds for x in r.latencies["create"]]
        lst = [x for r in rounds for x in r.latencies["list"]]
        both = create + lst
        ok = sum(r.n_ok for r in rounds)
        tot = sum(r.n for r in rounds)
        n_mid = max(mid.n, 1)
        print(
            f"{res['db']:12} | {statistics.median(rates):12.0f} "
            f"{f'({min(rates):.0f}-{max(rates):.0f})':>13} | {ms(pct(both, 50))} "
            f"{ms(pct(both, 99))} | {ms(pct(create, 50)):>10} {ms(pct(create, 99))} | "
            f"{ms(pct(lst, 50)):>8} {ms(pct(lst, 99))} | {ok:>5}/{tot:<5} | "
            f"{mid.server_cpu * 1000 / n_mid:9.2f} {mid.client_cpu * 1000 / n_mid:8.2f}"
        )
    print(line)
    for res in results:
        for r in res["rounds"]:
            if r.errors or r.timed_out:
                print(f"{res['db']}: {r.name}: errors {r.errors} timed_out={r.timed_out}")
        if res["tracebacks"] or res["error_lines"]:
            print(
                f"{res['db']}: server log has {res['tracebacks']} tracebacks, "
                f"{res['error_lines']} ERROR lines"
            )
    by_name = {res["db"]: res for res in results}
    for res in results:
        keyed = by_name.get(f"{res['db']}+key")
        if keyed is None:
            continue
        cpu = [_median_cpu(r) for r in (res, keyed)]
        p50 = [_median_p50(r) for r in (res, keyed)]
        print(
            f"auth + rate limits on {res['db']}: server CPU {cpu[0]:.3f} -> {cpu[1]:.3f} ms/req "
            f"({cpu[1] - cpu[0]:+.3f}), p50 {p50[0]:.2f} -> {p50[1]:.2f} ms "
            f"({p50[1] - p50[0]:+.2f}); medians of {cfg.rounds} rounds; target <= 0.3 ms/req"
        )
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end")


def _median_cpu(res: dict[str, Any]) -> float:
    return statistics.median(r.server_cpu * 1000 / max(r.n, 1) for r in res["rounds"])


def _median_p50(res: dict[str, Any]) -> float:
    return statistics.median(
        pct(r.latencies["create"] + r.latencies["list"], 50) * 1000 for r in res["rounds"]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="one shorter round")
    parser.add_argument(
        "--auth",
        choices=("off", "on", "both"),
        default="off",
        help="without a key, with one (auth + rate limits on), or both and their difference",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=CONCURRENCY,
        help=f"workers ({CONCURRENCY}); 1 shows added latency per request directly",
    )
    parser.add_argument(
        "--client",
        choices=("lean", "aiohttp"),
        default="lean",
        help="load generator's HTTP client (bench.runs_bench.Client)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds (3; quick 1)")
    parser.add_argument("--requests", type=int, default=None, help="per round (6000; quick 2000)")
    parser.add_argument(
        "--profile", type=Path, default=None, help="directory for a py-spy profile of round 1"
    )
    args = parser.parse_args(argv)
    cfg = Config(
        rounds=args.rounds or (1 if args.quick else 3),
        total=args.requests or (2000 if args.quick else 6000),
        time_limit=60.0,
        profile_dir=args.profile,
        concurrency=args.concurrency,
        client=args.client,
    )
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    results = []
    with tempfile.TemporaryDirectory(prefix="opengrove-crud-bench-") as tmp_name:
        modes = {"off": [False], "on": [True], "both": [False, True]}[args.auth]
        for db_name in dbs:
            print(f"== {db_name} ==", flush=True)
            results += run_db(cfg, db_name, Path(tmp_name), modes)
    report(cfg, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
