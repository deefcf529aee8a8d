"""Fault script: SIGKILL the process executing a streamed run, mid-answer, again and again.

    ./dev python -m bench.fault_bench [--db sqlite|postgres|both] [--kills 20] [--seed 1]

Processes, all on 127.0.0.1:
  * the fake OpenAI upstream, standalone (bench/upstream.py). No script: every chat request
    gets its default reply, an echo of the last user message ("Echo: <text>"), so the call an
    interrupted run makes again returns the same answer. Each run's user message is a long,
    distinctive text ("w1-r3 w2-r3 …"), streamed one word per chunk with a per-token delay, so
    a kill lands mid-answer;
  * SQLite: one `opengrove serve` (API + run worker) on a fixed data dir and port. Each round
    starts a streamed run, waits until deltas arrive (+ a random 0.2-1.5 s), SIGKILLs the
    server, starts it again on the same data dir and port, and reconnects the stream with
    `GET …/runs/{id}?stream=true` and `Last-Event-ID` = the last id received;
  * PostgreSQL (a fresh database): one API process (`serve`, OPENGROVE_RUN_WORKERS=false) and
    one `opengrove worker`. Most rounds SIGKILL the worker and start a new one: the client's
    stream on the API stays open and must simply continue. Every `--api-every`th round kills
    the API process instead; it is restarted and the stream reconnected with Last-Event-ID.

Checked per run:
  * the run ends `completed` (else: failed; not at rest within `--stuck-after` s: stuck);
  * the run's messages (`GET …/messages?run_id=`) are exactly one assistant message whose
    text is the expected answer, and one message_creation step (else duplicated/truncated);
  * the client's view: the deltas of the message named by `thread.message.completed`
    concatenate to the expected answer; no event id received twice and ids increasing
    (stream duplicates); every event of the run's log (a replay from the start after the run
    ended) was received, with the same name and data (stream gaps); the last connection
    ended with `thread.run.completed` then `done`.
  Recovery: seconds from the kill to the first delta the client received after it.

Every loop is bounded by a count and a deadline; processes and temp dirs are cleaned up;
the exit status is non-zero if any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.upstream import Upstream
from tests.databases import fresh_database
from tests.server_process import ServerProcess

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
MODEL = "fake-model"
TERMINAL = {"completed", "failed", "cancelled", "expired", "incomplete", "requires_action"}
DELTA = "thread.message.delta"


# ---------------------------------------------------------------------------- processes


def server_env(database_url: str, upstream_base_url: str, config_dir: Path) -> dict[str, str]:
    """The server's settings: the model alias `fake-model` routed to the fake upstream."""
    model_config = config_dir / "models.yaml"
    model_config.parent.mkdir(parents=True, exist_ok=True)
    model_config.write_text(
        "models:\n"
        f"  - name: {MODEL}\n"
        f"    model: openai/{MODEL}\n"
        f"    api_base: {upstream_base_url}\n"
        "    api_key_env: FAKE_UPSTREAM_KEY\n"
    )
    return {
        "DATABASE_URL": database_url,
        "OPENGROVE_MODELS": MODEL,
        "OPENGROVE_MODEL_CONFIG": str(model_config),
        "FAKE_UPSTREAM_KEY": "fake-key",
        "OPENAI_API_BASE": upstream_base_url,
        "OPENAI_API_KEY": "fake-key",
        "OPENGROVE_PRELOAD_LLM": "true",
        "OPENGROVE_LLM_TIMEOUT": "30",
    }


class Topology:
    """The processes under test. `kill(kind)` SIGKILLs one; `recover(kind)` replaces it.

    kinds: "server" (the one `serve` process, API and worker), "api" (the API process of a
    split topology), "worker" (its worker process). `reconnects(kind)`: the client's stream
    broke, so it must reconnect with Last-Event-ID.
    """

    def __init__(self, api: ServerProcess, worker_factory: Callable[[], ServerProcess] | None):
        self.api = api
        self.worker_factory = worker_factory
        self.workers: list[ServerProcess] = []

    @property
    def base_url(self) -> str:
        return self.api.base_url

    def start(self) -> Topology:
        self.api.start()  # migrates first: a worker finds the schema in place
        if self.worker_factory is not None:
            self.workers.append(self.worker_factory().start())
        return self

    def kill(self, kind: str) -> None:
        if kind == "worker":
            self.workers[-1].kill()
        else:
            self.api.kill()

    def recover(self, kind: str) -> None:
        if kind == "worker":
            assert self.worker_factory is not None
            self.workers.append(self.worker_factory().start())
        else:
            self.api.start()  # same data dir, same port

    @staticmethod
    def reconnects(kind: str) -> bool:
        return kind != "worker"

    def logs(self) -> str:
        return "".join(p.log() for p in [self.api, *self.workers])

    def stop(self) -> None:
        for proc in [self.api, *self.workers]:
            with contextlib.suppress(Exception):
                proc.stop()


# ---------------------------------------------------------------------------- the client


@dataclass
class Received:
    seq: int | None  # the SSE id (None: `done`, which has no id)
    event: str
    data: Any
    at: float  # time.monotonic() on arrival
    conn: int  # which connection brought it (0: the first)


@dataclass
class ClientView:
    """Every event a client received for one run, over all its connections."""

    events: list[Received] = field(default_factory=list)
    endings: list[str] = field(default_factory=list)  # how each connection ended
    run_id: str | None = None
    thread_id: str | None = None

    @property
    def last_id(self) -> int | None:
        ids = [e.seq for e in self.events if e.seq is not None]
        return ids[-1] if ids else None

    def count(self, event: str) -> int:
        return sum(1 for e in self.events if e.event == event)


def new_client() -> httpx.AsyncClient:
    # No keep-alive: a pooled connection to a killed server must never be reused.
    return httpx.AsyncClient(
        timeout=httpx.Timeout(30.0, connect=5.0),
        limits=httpx.Limits(max_keepalive_connections=0),
    )


async def read_stream(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    view: ClientView,
    conn: int,
    *,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    stop: Callable[[ClientView], bool] | None = None,
) -> str:
    """Read one SSE connection into `view`; how it ended: "done", "eof" (closed without
    `done`), "stopped" (`stop(view)` said so after an event: the client hung up), "http
    <status>", or the error that broke it. Bound it with asyncio.timeout."""
    try:
        async with client.stream(method, url, json=body, headers=headers) as resp:
            if resp.status_code != 200:
                await resp.aread()
                return f"http {resp.status_code}: {resp.text[:200]}"
            seq: int | None = None
            event: str | None = None
            data: list[str] = []
            async for line in resp.aiter_lines():
                if line == "":
                    if event is not None or data:
                        payload = "\n".join(data)
                        parsed = payload if payload == "[DONE]" else orjson.loads(payload)
                        name = event or "message"
                        view.events.append(Received(seq, name, parsed, time.monotonic(), conn))
                        if isinstance(parsed, dict) and parsed.get("object") == "thread.run":
                            view.run_id = parsed.get("id", view.run_id)
                            view.thread_id = parsed.get("thread_id", view.thread_id)
                        if name == "done":
                            return "done"
                        if stop is not None and stop(view):
                            return "stopped"
                    seq, event, data = None, None, []
                elif line.startswith(":"):
                    continue  # a comment (keep-alive)
                else:
                    key, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if key == "id":
                        seq = int(value) if value else None
                    elif key == "event":
                        event = value
                    elif key == "data":
                        data.append(value)
            return "eof"
    except httpx.HTTPError as exc:
        return f"broken ({type(exc).__name__})"


def create_body(assistant_id: str, text: str) -> dict[str, Any]:
    return {
        "assistant_id": assistant_id,
        "thread": {"messages": [{"role": "user", "content": text}]},
        "stream": True,
    }


def resume_url(base: str, view: ClientView) -> str:
    return f"{base}/v1/threads/{view.thread_id}/runs/{view.run_id}"


async def wait_until(cond: Callable[[], bool], within: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(step)
    return cond()


async def create_assistant(base: str) -> str:
    async with new_client() as client:
        r = await client.post(f"{base}/v1/assistants", json={"model": MODEL})
        r.raise_for_status()
        return str(r.json()["id"])


# ---------------------------------------------------------------------------- checks


def answer_text(rnd: int, words: int) -> str:
    """The user message of round `rnd`; the fake upstream answers "Echo: " + it."""
    return " ".join(f"w{i}-r{rnd}" for i in range(1, words + 1))


def classify(text: str | None, expected: str) -> str:
    if text == expected:
        return "ok"
    if not text:
        return "truncated"
    if len(text) < len(expected) and expected.startswith(text):
        return "truncated"
    if len(text) > len(expected) or text.count("w1-") > 1:
        return "duplicated"
    return "wrong"


def delta_text(data: dict[str, Any]) -> str:
    return "".join(
        part.get("text", {}).get("value", "") for part in data.get("delta", {}).get("content", [])
    )


@dataclass
class RoundResult:
    round: int
    kind: str  # what was killed
    run_id: str | None = None
    thread_id: str | None = None
    status: str = "?"
    stuck: bool = False
    stored: str = "?"  # the stored answer: ok / duplicated / truncated / wrong
    seen: str = "?"  # the client's answer (deltas of the completed message)
    stream_duplicates: int = 0
    stream_gaps: int = 0
    recovery: float | None = None
    broke: float | None = None  # seconds from the kill until the client's stream broke
    restart: float | None = None  # seconds from the kill until the replacement was ready
    kill_missed: bool = False  # the run had ended before the kill
    problems: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status in TERMINAL and self.status != "completed"

    @property
    def duplicated(self) -> bool:
        return "duplicated" in (self.stored, self.seen)

    @property
    def truncated(self) -> bool:
        return "truncated" in (self.stored, self.seen)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_view(res: RoundResult, view: ClientView, log: list[Received], expected: str) -> None:
    """The client's own view against the expected answer and the run's full event log."""
    ids = [e.seq for e in view.events if e.seq is not None]
    dupes = [seq for seq, n in Counter(ids).items() if n > 1]
    backwards = sum(1 for a, b in itertools.pairwise(ids) if b <= a)
    res.stream_duplicates = len(dupes) + (backwards if not dupes else 0)
    if dupes:
        res.problems.append(f"event ids received twice: {sorted(dupes)[:10]}")
    if backwards:
        res.problems.append(f"event ids not increasing ({backwards} times)")

    received = {e.seq: e for e in view.events if e.seq is not None}
    missing = [e for e in log if e.seq not in received]
    differing = [
        e.seq
        for e in log
        if e.seq in received and (received[e.seq].event, received[e.seq].data) != (e.event, e.data)
    ]
    res.stream_gaps = len(missing)
    if missing:
        res.problems.append(
            f"stream gap: {len(missing)} logged events never received, e.g. "
            f"{[(e.seq, e.event) for e in missing[:5]]}"
        )
    if differing:
        res.problems.append(f"events differ from the log at ids {differing[:10]}")

    last_conn = max((e.conn for e in view.events), default=0)
    tail = [e.event for e in view.events if e.conn == last_conn][-2:]
    if tail != ["thread.run.completed", "done"]:
        res.problems.append(f"the stream ended with {tail}, not thread.run.completed, done")

    completed = [e for e in view.events if e.event == "thread.message.completed"]
    if len(completed) != 1:
        res.seen = "duplicated" if len(completed) > 1 else "truncated"
        res.problems.append(f"{len(completed)} thread.message.completed events")
    if completed:
        message_id = completed[-1].data["id"]
        text = "".join(
            delta_text(e.data)
            for e in view.events
            if e.event == DELTA and e.data.get("id") == message_id
        )
        if res.seen == "?":
            res.seen = classify(text, expected)
        if res.seen != "ok":
            res.problems.append(
                f"client's answer {res.seen}: {len(text)} chars, expected {len(expected)}"
            )


async def check_server(
    res: RoundResult, base: str, view: ClientView, expected: str, stuck_after: float
) -> list[Received]:
    """Status, stored messages and steps; returns the run's full event log (a replay)."""
    url = resume_url(base, view)
    async with new_client() as client:
        run: dict[str, Any] = {}

        async def at_rest() -> bool:
            nonlocal run
            with contextlib.suppress(httpx.HTTPError):
                r = await client.get(url)
                if r.status_code == 200:
                    run = r.json()
            return run.get("status") in TERMINAL

        deadline = time.monotonic() + stuck_after
        for _ in range(int(stuck_after * 10) + 1):
            if await at_rest() or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        res.status = run.get("status", "?")
        if res.status not in TERMINAL:
            res.stuck = True
            res.problems.append(f"stuck: status {res.status} after {stuck_after:.0f} s")
            return []
        if res.status != "completed":
            res.problems.append(f"run {res.status}: {run.get('last_error')}")

        r = await client.get(
            f"{base}/v1/threads/{view.thread_id}/messages",
            params={"run_id": view.run_id, "limit": 100},
        )
        r.raise_for_status()
        messages = r.json()["data"]
        assistant = [m for m in messages if m["role"] == "assistant"]
        if len(assistant) != 1 or len(messages) != 1:
            res.stored = "duplicated" if len(assistant) > 1 else "truncated"
            res.problems.append(
                f"{len(messages)} messages for the run ({len(assistant)} from the assistant)"
            )
        if assistant:
            text = "".join(
                c["text"]["value"] for c in assistant[0]["content"] if c["type"] == "text"
            )
            if res.stored == "?":
                res.stored = classify(text, expected)
            if res.stored != "ok":
                res.problems.append(
                    f"stored answer {res.stored}: {len(text)} chars, expected {len(expected)}"
                )

        r = await client.get(f"{url}/steps", params={"limit": 100})
        r.raise_for_status()
        creations = [s for s in r.json()["data"] if s["type"] == "message_creation"]
        if len(creations) != 1:
            res.problems.append(f"{len(creations)} message_creation steps")
            if len(creations) > 1:
                res.stored = "duplicated"

        replay = ClientView()
        try:
            async with asyncio.timeout(15):
                ending = await read_stream(client, "GET", f"{url}?stream=true", replay, 0)
        except TimeoutError:
            ending = "timeout"
        if ending != "done":
            res.problems.append(f"the replay of the run's events ended: {ending}")
        return [e for e in replay.events if e.seq is not None]


# ---------------------------------------------------------------------------- one round


@dataclass
class Settings:
    words: int = 80
    kill_delay: tuple[float, float] = (0.2, 1.5)
    stuck_after: float = 60.0  # a run not at rest this long after the kill is stuck
    first_delta_timeout: float = 30.0


async def fault_round(
    top: Topology,
    assistant_id: str,
    rnd: int,
    kind: str,
    rng: random.Random,
    settings: Settings,
) -> RoundResult:
    """One streamed run, one SIGKILL of `kind` mid-answer, recovery, and every check."""
    res = RoundResult(rnd, kind)
    text = answer_text(rnd, settings.words)
    expected = f"Echo: {text}"
    base = top.base_url
    view = ClientView()
    async with new_client() as client:
        first = asyncio.create_task(
            read_stream(
                client,
                "POST",
                f"{base}/v1/threads/runs",
                view,
                0,
                body=create_body(assistant_id, text),
            )
        )
        try:
            if not await wait_until(
                lambda: view.count(DELTA) > 0 or first.done(), settings.first_delta_timeout
            ):
                res.problems.append("no delta before the kill")
            await asyncio.sleep(rng.uniform(*settings.kill_delay))
            res.kill_missed = first.done()
            killed_at = time.monotonic()
            top.kill(kind)
            if top.reconnects(kind):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        await asyncio.shield(first)
                if not first.done():
                    res.problems.append("the stream stayed open after its server died")
                res.broke = time.monotonic() - killed_at
            await asyncio.to_thread(top.recover, kind)
            res.restart = time.monotonic() - killed_at
            budget = max(1.0, killed_at + settings.stuck_after - time.monotonic())
            if top.reconnects(kind):
                view.endings.append(first.result() if first.done() else "open")
                if view.run_id is None:
                    res.problems.append("no run id before the kill")
                    return res
                headers = {"Last-Event-ID": str(view.last_id)} if view.last_id is not None else {}
                try:
                    async with asyncio.timeout(budget):
                        view.endings.append(
                            await read_stream(
                                client,
                                "GET",
                                f"{resume_url(top.base_url, view)}?stream=true",
                                view,
                                1,
                                headers=headers,
                            )
                        )
                except TimeoutError:
                    view.endings.append("timeout")
            else:
                try:
                    async with asyncio.timeout(budget):
                        view.endings.append(await asyncio.shield(first))
                except TimeoutError:
                    view.endings.append("timeout")
        finally:
            if not first.done():
                first.cancel()
                with contextlib.suppress(BaseException):
                    await first
    res.run_id, res.thread_id = view.run_id, view.thread_id
    after = [e.at - killed_at for e in view.events if e.event == DELTA and e.at > killed_at]
    res.recovery = after[0] if after else None
    if view.endings[-1] != "done":
        res.stuck = True
        res.problems.append(f"the client's stream ended: {view.endings}")
    if view.run_id is None:
        res.problems.append("no run id")
        return res
    log = await check_server(res, top.base_url, view, expected, settings.stuck_after)
    check_view(res, view, log, expected)
    return res


# ---------------------------------------------------------------------------- one database


@dataclass
class Summary:
    db: str
    rounds: list[RoundResult] = field(default_factory=list)
    aborted: str | None = None
    log_tracebacks: int = 0

    def row(self) -> dict[str, Any]:
        rec = [r.recovery for r in self.rounds if r.recovery is not None]
        return {
            "db": self.db,
            "kills": len(self.rounds),
            "completed": sum(r.status == "completed" for r in self.rounds),
            "failed": sum(r.failed for r in self.rounds),
            "stuck": sum(r.stuck for r in self.rounds),
            "duplicated": sum(r.duplicated for r in self.rounds),
            "truncated": sum(r.truncated for r in self.rounds),
            "gaps": sum(r.stream_gaps for r in self.rounds),
            "dups": sum(r.stream_duplicates for r in self.rounds),
            "other": sum(
                bool(r.problems)
                and not (r.failed or r.stuck or r.duplicated or r.truncated)
                and not (r.stream_gaps or r.stream_duplicates)
                for r in self.rounds
            ),
            "rec_med": statistics.median(rec) if rec else float("nan"),
            "rec_max": max(rec) if rec else float("nan"),
        }

    @property
    def ok(self) -> bool:
        return self.aborted is None and all(r.ok for r in self.rounds)


async def fault_rounds(
    top: Topology,
    kinds: list[str],
    rng: random.Random,
    settings: Settings,
    summary: Summary,
    deadline: float,
    progress: bool = True,
) -> None:
    assistant_id = await create_assistant(top.base_url)
    for rnd, kind in enumerate(kinds, 1):
        if time.monotonic() > deadline:
            summary.aborted = f"deadline reached after {rnd - 1} rounds"
            return
        try:
            res = await fault_round(top, assistant_id, rnd, kind, rng, settings)
        except Exception as exc:
            summary.aborted = f"round {rnd} ({kind}): {type(exc).__name__}: {exc}"[-3000:]
            return
        summary.rounds.append(res)
        if progress:
            rec = f"{res.recovery:5.2f}s" if res.recovery is not None else "  n/a"
            flag = "ok" if res.ok else "FAIL " + "; ".join(res.problems)
            late = " (killed after the end)" if res.kill_missed else ""
            print(
                f"  [{summary.db}] round {rnd:2}/{len(kinds)} kill {kind:6} run {res.run_id} "
                f"{res.status:9} stream broke {res.broke or 0:4.2f}s restart "
                f"{res.restart or 0:5.2f}s recovery {rec}{late}  {flag}",
                flush=True,
            )


def kinds_for(db: str, kills: int, api_every: int) -> list[str]:
    if db == "sqlite":
        return ["server"] * kills
    return [
        "api" if api_every and i % api_every == api_every - 1 else "worker" for i in range(kills)
    ]


def run_db(db: str, args: argparse.Namespace, upstream: Upstream, tmp: Path) -> Summary:
    summary = Summary(db)
    work = tmp / db
    work.mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("OPENGROVE_TEST_DATABASE_URL")
    if db == "postgres":
        os.environ["OPENGROVE_TEST_DATABASE_URL"] = saved or PG_URL
    else:
        os.environ.pop("OPENGROVE_TEST_DATABASE_URL", None)
    settings = Settings(words=args.words, stuck_after=args.stuck_after)
    rng = random.Random(f"{args.seed}-{db}")
    top: Topology | None = None
    try:
        with fresh_database(work / "db") as url:
            (work / "db").mkdir(parents=True, exist_ok=True)
            env = server_env(url, upstream.base_url, work / "config")
            env["OPENGROVE_RUN_LEASE_SECONDS"] = str(args.lease_seconds)
            if db == "sqlite":
                top = Topology(ServerProcess(work / "server", env=env), None)
            else:
                workers = iter(range(10_000))
                top = Topology(
                    ServerProcess(work / "api", env={**env, "OPENGROVE_RUN_WORKERS": "false"}),
                    lambda: ServerProcess(
                        work / f"worker-{next(workers)}", env=env, command="worker"
                    ),
                )
            top.start()
            deadline = time.monotonic() + args.kills * 90 + 60
            kinds = kinds_for(db, args.kills, args.api_every)
            asyncio.run(fault_rounds(top, kinds, rng, settings, summary, deadline))
            logs = top.logs()
            summary.log_tracebacks = logs.count("Traceback")
            if not summary.ok:
                print(f"--- {db}: server log lines about failed runs ---", file=sys.stderr)
                bad = {r.run_id for r in summary.rounds if r.problems and r.run_id}
                for line in logs.splitlines():
                    if '" 200' in line or '" 404' in line:
                        continue  # access log
                    if any(run_id in line for run_id in bad) or "Traceback" in line:
                        print(line[:400], file=sys.stderr)
    except Exception as exc:
        summary.aborted = f"{type(exc).__name__}: {exc}"[-3000:]
    finally:
        if top is not None:
            top.stop()
        if saved is None:
            os.environ.pop("OPENGROVE_TEST_DATABASE_URL", None)
        else:
            os.environ["OPENGROVE_TEST_DATABASE_URL"] = saved
    return summary


# ---------------------------------------------------------------------------- report


def report(summaries: list[Summary], args: argparse.Namespace) -> None:
    line = "-" * 122
    print()
    print(line)
    print(
        f"SIGKILL mid-stream: {args.words}-word answers at {args.token_delay_ms:g} ms/token, "
        f"kill 0.2-1.5 s after the first delta; lease {args.lease_seconds:g} s; seed {args.seed}"
    )
    print(line)
    cols = (
        f"{'db':9} {'kills':>5} {'completed':>9} {'failed':>6} {'stuck':>5} {'duplicated':>10} "
        f"{'truncated':>9} {'stream gaps':>11} {'stream dups':>11} {'other':>5} "
        f"{'recovery med':>12} {'max':>6}"
    )
    print(cols)
    for s in summaries:
        r = s.row()
        print(
            f"{r['db']:9} {r['kills']:>5} {r['completed']:>9} {r['failed']:>6} {r['stuck']:>5} "
            f"{r['duplicated']:>10} {r['truncated']:>9} {r['gaps']:>11} {r['dups']:>11} "
            f"{r['other']:>5} {r['rec_med']:>11.2f}s {r['rec_max']:>5.2f}s"
        )
    print(line)
    for s in summaries:
        kinds = Counter(r.kind for r in s.rounds)
        missed = sum(r.kill_missed for r in s.rounds)
        print(
            f"{s.db}: killed {dict(kinds)}; kills after the run had ended: {missed}; "
            f"tracebacks in server logs: {s.log_tracebacks}"
        )
        if s.aborted:
            print(f"{s.db}: ABORTED: {s.aborted}")
        for r in s.rounds:
            if r.problems:
                print(f"{s.db}: round {r.round} run {r.run_id} ({r.kind}): {'; '.join(r.problems)}")
    print(line)
    print("PASS" if all(s.ok for s in summaries) else "FAIL")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--words", type=int, default=80, help="words per answer")
    parser.add_argument("--token-delay-ms", type=float, default=40.0)
    parser.add_argument("--lease-seconds", type=float, default=3.0)
    parser.add_argument(
        "--api-every", type=int, default=4, help="PostgreSQL: kill the API every Nth round"
    )
    parser.add_argument("--stuck-after", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    summaries: list[Summary] = []
    with tempfile.TemporaryDirectory(prefix="opengrove-fault-") as tmp_name:
        tmp = Path(tmp_name)
        upstream = Upstream(tmp / "upstream.log", token_delay_ms=args.token_delay_ms).start()
        try:
            for db in dbs:
                print(f"== {db} ==", flush=True)
                summaries.append(run_db(db, args, upstream, tmp))
        finally:
            upstream.stop()
    report(summaries, args)
    return 0 if all(s.ok for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
