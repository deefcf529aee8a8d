"""Runs benchmark: time-to-first-token and throughput, through opengrove vs. the upstream alone.

    uv run python -m bench.runs_bench [--db sqlite|postgres|both] [--quick]
    uv run --with py-spy python -m bench.runs_bench --db both --profile /tmp/prof   # + py-spy

Three processes, all on 127.0.0.1:
  * the fake OpenAI upstream, standalone (`python -m tests.fake_upstream`), its per-token delay
    switched through `POST /__fake__/config`;
  * the real server (`opengrove serve`, via tests.server_process.ServerProcess), its model
    alias `fake-model` routed to that upstream (as tests/conftest.py `server_env` does);
  * this client: keep-alive connections through bench.lean_http (or `--client aiohttp` /
    `--client httpx` — see `Client` for why that matters on two shared cores).

Measured:
  1. TTFT, at concurrency 1 and 100 (closed loop: N workers, each sends its next request when
     the previous one ends), upstream token delay 20 ms:
       server: `POST /v1/threads/runs` (thread + run in one request, stream=true), from send to
               the first `thread.message.delta` event; the stream is then read to its end;
       direct: `POST /v1/chat/completions` (stream=true) to the upstream, from send to the first
               chunk with non-empty `delta.content`; read to its end.
  2. Throughput at concurrency 50, upstream delay 0: completed runs/s, each run created with
     `POST /v1/threads/runs` stream=true and awaited until `thread.run.completed` (the default,
     `--throughput-mode stream`) or created with stream=false and polled every 50 ms
     (`--throughput-mode poll`). Repeated (`--repeat`), median reported.
  Also: server/upstream/client CPU milliseconds per run (from /proc), which is steadier than
  latency on a shared, noisy machine; and the server TTFT split into segments by
  the first arrival of thread.run.created / in_progress / message.created / message.delta.

Related: bench/profile_summary.py (reads the --profile output), bench/sql_count.py (SQL
statements and commits per run, counted inside the server).

On PostgreSQL a fresh database is created (tests/databases.py) and dropped afterwards.
Every loop is bounded by a count and by a deadline; the script exits by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.lean_http import LeanClient
from bench.upstream import Upstream
from tests.databases import fresh_database
from tests.server_process import ServerProcess

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
MODEL = "fake-model"
USER_TEXT = "Say hello"  # the upstream's default reply echoes it: "Echo: Say hello" (3 tokens)
INSTRUCTIONS = "You are terse."
TERMINAL = {"completed", "failed", "cancelled", "expired", "incomplete", "requires_action"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- processes


POSTGRES = -1  # as a pid: every PostgreSQL server process on the machine


def cpu_seconds(pid: int | None = None) -> float:
    """User+system CPU seconds of a process and its live children (serve --processes N),
    this process when pid is None, all PostgreSQL processes when POSTGRES."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    if pid == POSTGRES:
        return sum(cpu_seconds(int(p.parent.name)) for p in _postgres_comms())
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return 0.0
    # utime + stime, and cutime + cstime: children that ended (a kernel, a worker) keep
    # counting once reaped, so the figure never drops when one exits mid-round.
    own = sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK
    return own + sum(cpu_seconds(child) for child in children)


def _postgres_comms() -> list[Path]:
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "postgres" and _is_root_postgres(comm.parent):
                found.append(comm)
    return found


def _is_root_postgres(proc: Path) -> bool:
    """The postmaster, not its backends (cpu_seconds adds its children, backends included)."""
    with contextlib.suppress(OSError):
        parent = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
        return (Path("/proc") / parent / "comm").read_text().strip() != "postgres"
    return False


def server_env(database_url: str, upstream: Upstream, data_dir: Path) -> dict[str, str]:
    model_config = data_dir / "models.yaml"
    model_config.parent.mkdir(parents=True, exist_ok=True)
    model_config.write_text(
        "models:\n"
        f"  - name: {MODEL}\n"
        f"    model: openai/{MODEL}\n"
        f"    api_base: {upstream.base_url}\n"
        "    api_key_env: FAKE_UPSTREAM_KEY\n"
    )
    return {
        "DATABASE_URL": database_url,
        "OPENGROVE_MODELS": MODEL,
        "OPENGROVE_MODEL_CONFIG": str(model_config),
        "FAKE_UPSTREAM_KEY": "fake-key",
        "OPENAI_API_BASE": upstream.base_url,
        "OPENAI_API_KEY": "fake-key",
        "OPENGROVE_LLM_TIMEOUT": "30",
    }


class Profiler:
    """py-spy record against the server for one phase (only with --profile)."""

    def __init__(self, out_dir: Path | None, pid: int, phases: set[str], extra: list[str]) -> None:
        self.out_dir = out_dir
        self.pid = pid
        self.phases = phases
        self.extra = extra
        self.exe = shutil.which("py-spy") if out_dir else None
        if out_dir and not self.exe:
            raise SystemExit("--profile needs py-spy: uv run --with py-spy python -m bench...")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, name: str) -> None:
        if not self.exe or not self.out_dir or name not in self.phases:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        out = self.out_dir / f"{name}.speedscope.json"
        self.proc = subprocess.Popen(
            [
                self.exe,
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                "100",
                "--format",
                "speedscope",
                "-o",
                str(out),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.out_dir / f"{name}.py-spy.log").open("w"),
        )
        time.sleep(1.0)  # let it attach

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


# ---------------------------------------------------------------------------- client


class Client:
    """The load generator's HTTP client: one shared pool for every request.

    `httpx` (the default): one httpx.AsyncClient with a large pool. Caveat measured here: its
    pool (httpcore 1.0.x `AsyncConnectionPool._assign_requests_to_connections`) scans every
    pooled connection, probing idle ones for readability, on each request and each response
    close — O(connections) per request — so at ~50+ concurrent streams the client process
    saturates a core and inflates *both* the direct and the server latencies.
    `aiohttp`: one aiohttp.ClientSession (limit 1000), the same logic, ~30x less client CPU.
    `lean`: bench.lean_http (keep-alive connections, httptools), a fraction of aiohttp's CPU
    again: on two shared cores, what the client spends is taken from the server.
    """

    def __init__(self, kind: str, headers: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.headers = headers
        self._httpx: httpx.AsyncClient | None = None
        self._aiohttp: Any = None
        self._lean: dict[str, LeanClient] = {}

    async def __aenter__(self) -> Client:
        if self.kind == "httpx":
            self._httpx = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000),
                timeout=httpx.Timeout(60.0, connect=10.0),
                headers=self.headers,
            )
        elif self.kind == "aiohttp":
            import aiohttp

            self._aiohttp = aiohttp.ClientSession(
                # keepalive below uvicorn's 5 s, so a pooled connection is never one it closed
                connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=2),
                timeout=aiohttp.ClientTimeout(total=60, connect=10),
                headers=self.headers,
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._httpx is not None:
            await self._httpx.aclose()
        if self._aiohttp is not None:
            await self._aiohttp.close()
        for lean in self._lean.values():
            await lean.close()

    def _lean_for(self, url: str) -> tuple[LeanClient, str]:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        lean = self._lean.get(origin)
        if lean is None:
            lean = self._lean[origin] = LeanClient(origin, self.headers)
        return lean, parts.path + (f"?{parts.query}" if parts.query else "")

    @contextlib.asynccontextmanager
    async def stream_lines(
        self, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> AsyncIterator[tuple[int, AsyncIterator[str]]]:
        """POST, then (status, the response body's lines without line endings)."""
        if self._httpx is not None:
            async with self._httpx.stream("POST", url, json=body, headers=headers) as resp:
                yield resp.status_code, resp.aiter_lines()
            return
        if self.kind == "lean":
            lean, path = self._lean_for(url)
            async with lean.stream_lines(path, body, headers) as (status, lean_lines):
                yield status, lean_lines
            return

        async with self._aiohttp.post(url, json=body, headers=headers) as resp:

            async def lines() -> AsyncIterator[str]:
                async for raw in resp.content:
                    yield raw.decode().rstrip("\r\n")

            yield resp.status, lines()

    async def request(
        self, method: str, url: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        if self._httpx is not None:
            resp = await self._httpx.request(method, url, json=body)
            return resp.status_code, resp.json()
        if self.kind == "lean":
            lean, path = self._lean_for(url)
            return await lean.request(method, path, body)
        async with self._aiohttp.request(method, url, json=body) as resp:
            return resp.status, await resp.json()


# ---------------------------------------------------------------------------- requests


@dataclass
class Result:
    ttft: float | None = None  # seconds to the first token
    total: float | None = None  # seconds to the end (run completed / stream done)
    error: str | None = None
    marks: dict[str, float] = field(default_factory=dict)  # first arrival of each event


# Where a streamed run's time to first token goes, from the arrival of these events.
TIMELINE = (
    ("thread.run.created", "send->run.created (API)"),
    ("thread.run.in_progress", "->in_progress (claim)"),
    ("thread.message.created", "->msg.created (prompt+LLM+commit)"),
    ("thread.message.delta", "->1st delta"),
)


async def server_stream_run(client: Client, base: str, assistant_id: str) -> Result:
    body = {
        "assistant_id": assistant_id,
        "thread": {"messages": [{"role": "user", "content": USER_TEXT}]},
        "stream": True,
    }
    t0 = time.perf_counter()
    res = Result()
    completed = False
    async with client.stream_lines(f"{base}/v1/threads/runs", body) as (status, lines):
        if status != 200:
            return Result(error=f"HTTP {status}")
        async for line in lines:
            if not line.startswith("event: "):
                continue
            event = line[7:]
            if event not in res.marks:
                res.marks[event] = time.perf_counter() - t0
            if event == "thread.message.delta":
                if res.ttft is None:
                    res.ttft = time.perf_counter() - t0
            elif event == "thread.run.completed":
                completed = True
                res.total = time.perf_counter() - t0
            elif event.startswith("thread.run.") and event[11:] in TERMINAL:
                res.error = event
    if not completed and res.error is None:
        res.error = "stream ended without thread.run.completed"
    return res


async def server_poll_run(client: Client, base: str, assistant_id: str) -> Result:
    body = {
        "assistant_id": assistant_id,
        "thread": {"messages": [{"role": "user", "content": USER_TEXT}]},
    }
    t0 = time.perf_counter()
    status, run = await client.request("POST", f"{base}/v1/threads/runs", body)
    if status != 200:
        return Result(error=f"HTTP {status}")
    for _ in range(1200):  # 60 s at 50 ms
        if run["status"] in TERMINAL:
            break
        await asyncio.sleep(0.05)
        status, run = await client.request(
            "GET", f"{base}/v1/threads/{run['thread_id']}/runs/{run['id']}"
        )
        if status != 200:
            return Result(error=f"HTTP {status} while polling")
    if run["status"] != "completed":
        return Result(error=f"run {run['status']}")
    return Result(total=time.perf_counter() - t0)


async def direct_stream(client: Client, upstream_base: str) -> Result:
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": USER_TEXT},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    res = Result()
    async with client.stream_lines(
        f"{upstream_base}/chat/completions", body, {"Authorization": "Bearer fake-key"}
    ) as (status, lines):
        if status != 200:
            return Result(error=f"HTTP {status}")
        async for line in lines:
            if res.ttft is not None or not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                continue
            choices = json.loads(payload).get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                res.ttft = time.perf_counter() - t0
    res.total = time.perf_counter() - t0
    if res.ttft is None:
        res.error = "no content chunk"
    return res


@dataclass
class Phase:
    name: str
    results: list[Result] = field(default_factory=list)
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # process → CPU seconds in the phase
    timed_out: bool = False

    @property
    def ok(self) -> list[Result]:
        return [r for r in self.results if r.error is None]

    @property
    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            if r.error:
                out[r.error] = out.get(r.error, 0) + 1
        return out


async def drive(
    name: str,
    fn: Callable[[], Awaitable[Result]],
    concurrency: int,
    total: int,
    time_limit: float,
    pids: dict[str, int | None],
) -> Phase:
    """Closed loop: `concurrency` workers share `total` requests; stop starting at the deadline."""
    phase = Phase(name)
    todo = iter(range(total))
    deadline = time.perf_counter() + time_limit

    async def worker() -> None:
        for _ in todo:
            if time.perf_counter() > deadline:
                phase.timed_out = True
                return
            try:
                phase.results.append(await fn())
            except Exception as exc:  # a failed request is a data point
                phase.results.append(Result(error=type(exc).__name__))

    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    _, pending = await asyncio.wait(tasks, timeout=time_limit + 60)
    for task in pending:
        task.cancel()
        phase.timed_out = True
    await asyncio.gather(*pending, return_exceptions=True)
    phase.wall = time.perf_counter() - t0
    phase.cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
    return phase


# ---------------------------------------------------------------------------- statistics


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]


def ms(x: float) -> str:
    return "   n/a" if x != x else f"{x * 1000:6.1f}"


# ---------------------------------------------------------------------------- one database


@dataclass
class Config:
    quick: bool
    token_delay_ms: float
    repeat: int
    throughput_mode: str
    profile_dir: Path | None
    client: str = "lean"
    profile_phases: set[str] = field(default_factory=lambda: {"ttft_c100", "throughput"})
    py_spy_args: list[str] = field(default_factory=list)
    processes: int = 1  # serve --processes
    ttft_concurrency: int = 50  # the many-streams TTFT phase (the target: 50 streams)

    @property
    def n_ttft_c1(self) -> int:
        return 30 if self.quick else 100

    @property
    def n_ttft_c100(self) -> int:
        return 300 if self.quick else 1000

    @property
    def n_throughput(self) -> int:
        return 100 if self.quick else 500

    @property
    def time_limit(self) -> float:
        return 60.0 if self.quick else 120.0


async def bench_db(
    cfg: Config, db_name: str, server: ServerProcess, upstream: Upstream
) -> dict[str, Any]:
    assert server.proc is not None
    pids: dict[str, int | None] = {
        "server": server.proc.pid,
        "upstream": upstream.proc.pid if upstream.proc else None,
        "client": None,
    }
    if db_name == "postgres":  # its CPU is part of each run's cost, on the same cores
        pids["database"] = POSTGRES
    profiler = Profiler(
        cfg.profile_dir / db_name if cfg.profile_dir else None,
        server.proc.pid,
        cfg.profile_phases,
        cfg.py_spy_args,
    )
    base = server.base_url
    out: dict[str, Any] = {"db": db_name}
    async with Client(cfg.client) as client:
        status, assistant = await client.request(
            "POST", f"{base}/v1/assistants", {"model": MODEL, "instructions": INSTRUCTIONS}
        )
        if status != 200:
            raise RuntimeError(f"creating the assistant: HTTP {status} {assistant}")
        aid = assistant["id"]

        def server_run() -> Awaitable[Result]:
            return server_stream_run(client, base, aid)

        def direct() -> Awaitable[Result]:
            return direct_stream(client, upstream.base_url)

        # Warm-up: litellm's first call, connection pools, SQLAlchemy statement caches.
        upstream.set_delay(cfg.token_delay_ms / 1000)
        warm = [
            await drive("warm", server_run, 1, 5, 60, pids),
            await drive("warm", server_run, 50, 100, 60, pids),
            await drive("warm", direct, 1, 5, 30, pids),
            await drive("warm", direct, 50, 100, 30, pids),
        ]
        if any(w.errors for w in warm):
            print(f"  [{db_name}] warm-up errors: {[w.errors for w in warm]}", flush=True)

        ttft: dict[tuple[int, str], Phase] = {}
        for conc, n in ((1, cfg.n_ttft_c1), (cfg.ttft_concurrency, cfg.n_ttft_c100)):
            for path, fn in (("direct", direct), ("server", server_run)):
                upstream.reset()
                if path == "server":
                    profiler.start(f"ttft_c{conc}")
                ttft[conc, path] = await drive(
                    f"ttft {path} c{conc}", fn, conc, n, cfg.time_limit, pids
                )
                profiler.stop()
                p = ttft[conc, path]
                print(
                    f"  [{db_name}] TTFT {path:6} c={conc:<3} n={len(p.ok)}/{len(p.results)} "
                    f"median {ms(pct([r.ttft for r in p.ok], 50)).strip()} ms  "
                    f"({p.wall:.1f}s){'  errors: ' + str(p.errors) if p.errors else ''}",
                    flush=True,
                )
        out["ttft"] = ttft

        upstream.set_delay(0.0)
        runner = server_run
        if cfg.throughput_mode == "poll":

            def runner() -> Awaitable[Result]:
                return server_poll_run(client, base, aid)

        await drive("warm", runner, 50, 50, 60, pids)
        rounds: list[Phase] = []
        for i in range(cfg.repeat):
            upstream.reset()
            if i == 0:
                profiler.start("throughput")
            p = await drive(
                f"throughput #{i + 1}", runner, 50, cfg.n_throughput, cfg.time_limit, pids
            )
            profiler.stop()
            rounds.append(p)
            print(
                f"  [{db_name}] throughput #{i + 1}: {len(p.ok)}/{len(p.results)} runs in "
                f"{p.wall:.2f}s = {len(p.ok) / p.wall:.1f} runs/s"
                f"{'  errors: ' + str(p.errors) if p.errors else ''}",
                flush=True,
            )
        out["throughput"] = rounds
    log = server.log()
    out["server_tracebacks"] = log.count("Traceback")
    if out["server_tracebacks"]:
        start = log.index("Traceback")
        print(f"first server traceback:\n{log[max(0, start - 300) : start + 3000]}")
    out["server_errors"] = len(re.findall(r" (ERROR|CRITICAL) ", log))
    return out


def run_db(cfg: Config, db_name: str, upstream: Upstream, tmp: Path) -> dict[str, Any]:
    work = tmp / db_name
    work.mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("OPENGROVE_TEST_DATABASE_URL")
    if db_name == "postgres":
        os.environ["OPENGROVE_TEST_DATABASE_URL"] = saved or PG_URL
    else:
        os.environ.pop("OPENGROVE_TEST_DATABASE_URL", None)
    try:
        with fresh_database(work / "db") as url:
            if url.startswith("sqlite"):
                (work / "db").mkdir(parents=True, exist_ok=True)
            env = server_env(url, upstream, work / "server")
            env["OPENGROVE_PROCESSES"] = str(cfg.processes)
            server = ServerProcess(work / "server", env=env)
            server.start()
            try:
                return asyncio.run(bench_db(cfg, db_name, server, upstream))
            except BaseException:
                print(server.log()[-4000:], file=sys.stderr)
                raise
            finally:
                server.stop()
    finally:
        if saved is None:
            os.environ.pop("OPENGROVE_TEST_DATABASE_URL", None)
        else:
            os.environ["OPENGROVE_TEST_DATABASE_URL"] = saved


# ---------------------------------------------------------------------------- report


def cpu_per_run(p: Phase, who: str) -> str:
    n = len(p.results) or 1
    return f"{p.cpu.get(who, 0.0) * 1000 / n:5.1f}"


def report(cfg: Config, results: list[dict[str, Any]]) -> None:
    line = "-" * 108
    print()
    print(line)
    print(f"client: one shared {cfg.client} client; server processes: {cfg.processes}")
    print(
        f"TTFT — upstream token delay {cfg.token_delay_ms:g} ms. server: POST /v1/threads/runs "
        "stream=true → first thread.message.delta;"
    )
    print(
        "       direct: POST <upstream>/v1/chat/completions stream=true → first content chunk."
        " Closed loop; times in ms."
    )
    print(line)
    print(
        f"{'db':9} {'conc':>4} | {'direct med':>10} {'p99':>7} | {'server med':>10} {'p99':>7} | "
        f"{'ratio':>6} {'added':>7} | {'n ok':>9} | {'CPU ms/run srv upst cli':>24}"
    )
    for res in results:
        for conc in (1, cfg.ttft_concurrency):
            d, s = res["ttft"][conc, "direct"], res["ttft"][conc, "server"]
            dt, st = [r.ttft for r in d.ok], [r.ttft for r in s.ok]
            dm, sm = pct(dt, 50), pct(st, 50)
            print(
                f"{res['db']:9} {conc:>4} | {ms(dm):>10} {ms(pct(dt, 99)):>7} | "
                f"{ms(sm):>10} {ms(pct(st, 99)):>7} | {sm / dm:5.2f}x {ms(sm - dm):>7} | "
                f"{len(s.ok):>4}/{len(s.results):<4} | "
                f"{cpu_per_run(s, 'server'):>9} {cpu_per_run(s, 'upstream')} "
                f"{cpu_per_run(s, 'client')}"
            )
    print(line)
    print("Server TTFT by segment (median ms between first arrivals of events):")
    print(f"{'db':9} {'conc':>4}" + "".join(f" | {label:>34}" for _, label in TIMELINE))
    for res in results:
        for conc in (1, cfg.ttft_concurrency):
            server = res["ttft"][conc, "server"]
            ok = [r for r in server.ok if all(e in r.marks for e, _ in TIMELINE)]
            cells, prev = [], None
            for event, _ in TIMELINE:
                seg = [r.marks[event] - (r.marks[prev] if prev else 0.0) for r in ok]
                cells.append(f"{ms(pct(seg, 50)).strip():>34}")
                prev = event
            print(f"{res['db']:9} {conc:>4}" + "".join(f" | {c}" for c in cells))
    print(line)
    how = (
        "stream=true until thread.run.completed"
        if cfg.throughput_mode == "stream"
        else "create (stream=false) + poll every 50 ms"
    )
    print(
        f"Throughput — concurrency 50, upstream delay 0, POST /v1/threads/runs {how}; "
        f"{cfg.n_throughput} runs x {cfg.repeat}"
    )
    print(line)
    print(
        f"{'db':9} | {'runs/s median':>13} {'(min-max)':>15} | {'run latency med':>15} {'p99':>7} |"
        f" {'ok/total':>9} | {'CPU ms/run srv upst cli db':>27} | {'srv CPU util':>12}"
    )
    for res in results:
        rounds: list[Phase] = res["throughput"]
        rates = [len(p.ok) / p.wall for p in rounds]
        lat = [r.total for p in rounds for r in p.ok if r.total is not None]
        mid = sorted(rounds, key=lambda p: len(p.ok) / p.wall)[len(rounds) // 2]
        ok = sum(len(p.ok) for p in rounds)
        tot = sum(len(p.results) for p in rounds)
        print(
            f"{res['db']:9} | {statistics.median(rates):13.1f} "
            f"{f'({min(rates):.1f}-{max(rates):.1f})':>15} | {ms(pct(lat, 50)):>15} "
            f"{ms(pct(lat, 99)):>7} | {ok:>4}/{tot:<4} | "
            f"{cpu_per_run(mid, 'server'):>9} {cpu_per_run(mid, 'upstream')} "
            f"{cpu_per_run(mid, 'client')} "
            f"{cpu_per_run(mid, 'database') if 'database' in mid.cpu else '    -'} | "
            f"{mid.cpu['server'] / mid.wall * 100:10.0f}%"
        )
    print(line)
    for res in results:
        bad = [p for p in [*res["ttft"].values(), *res["throughput"]] if p.errors or p.timed_out]
        for p in bad:
            print(f"{res['db']}: {p.name}: errors {p.errors} timed_out={p.timed_out}")
        if res["server_tracebacks"] or res["server_errors"]:
            print(
                f"{res['db']}: server log has {res['server_tracebacks']} tracebacks, "
                f"{res['server_errors']} ERROR lines"
            )
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end")


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--token-delay-ms", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=None, help="throughput rounds (3; quick 1)")
    parser.add_argument("--throughput-mode", choices=("stream", "poll"), default="stream")
    parser.add_argument(
        "--client",
        choices=("lean", "aiohttp", "httpx"),
        default="lean",
        help="load generator's HTTP client (see Client: what it spends, the server cannot)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="directory for py-spy speedscope profiles of the server (TTFT c=100, throughput)",
    )
    parser.add_argument(
        "--profile-phases",
        default="ttft_c100,throughput",
        help="which phases --profile records (ttft_c1, ttft_c100, throughput)",
    )
    parser.add_argument(
        "--py-spy-args", default="", help='extra py-spy record arguments, e.g. "--native"'
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="server processes (serve --processes N)"
    )
    parser.add_argument(
        "--ttft-concurrency",
        type=int,
        default=50,
        help="streams in the many-streams TTFT phase (the target: 50)",
    )
    args = parser.parse_args(argv)
    cfg = Config(
        quick=args.quick,
        token_delay_ms=args.token_delay_ms,
        repeat=args.repeat or (1 if args.quick else 3),
        throughput_mode=args.throughput_mode,
        profile_dir=args.profile,
        client=args.client,
        profile_phases=set(args.profile_phases.split(",")),
        py_spy_args=args.py_spy_args.split(),
        processes=args.processes,
        ttft_concurrency=args.ttft_concurrency,
    )
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    results = []
    with tempfile.TemporaryDirectory(prefix="opengrove-bench-") as tmp_name:
        tmp = Path(tmp_name)
        upstream = Upstream(tmp / "upstream.log", token_delay_ms=cfg.token_delay_ms).start()
        try:
            for db_name in dbs:
                print(f"== {db_name} ==", flush=True)
                results.append(run_db(cfg, db_name, upstream, tmp))
        finally:
            upstream.stop()
    report(cfg, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
