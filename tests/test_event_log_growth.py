"""Bounded growth of run event logs and streams, through the real server (SQLite or PostgreSQL).

* Compaction: an ended run's log is one row, and a replay of it — from the start, or after any
  Last-Event-ID, including ids inside what were batches of deltas — is exactly the stream live
  clients got; every way a run ends compacts.
* Pruning: logs of ended runs older than the retention go (runs, messages stay; a stream of
  such a run gets its final event alone); active and young runs keep theirs.
* Slow clients: a stream whose client stops reading is dropped with an `error` event; the run
  completes and another stream gets everything; a far-behind stream holds a bounded queue.
* One poller: N streams of runs executed by another process cost one log query per tick,
  whatever N (counted in SQL statements and in the hub's counters, not timed).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import create_async_engine

from app.runs.events import COMPACTED, MAX_QUEUED, Event, EventHub
from tests.app_server import AppServer, make_settings
from tests.conftest import server_env
from tests.databases import fresh_database
from tests.fake_upstream import FakeReply, FakeToolCall, FakeUpstream
from tests.helpers import WEATHER
from tests.server_process import ServerProcess
from tests.spec_check import validate_sse_stream

Received = tuple[int | None, str, Any]  # (SSE id, event, data)


# ---------------------------------------------------------------------------- helpers


def parse_sse(body: str) -> list[Received]:
    """(id, event, data) of every event in an SSE body; comments (keep-alives) skipped."""
    events: list[Received] = []
    for block in body.split("\n\n"):
        seq: int | None = None
        name: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "id":
                seq = int(value) if value else None
            elif key == "event":
                name = value
            elif key == "data":
                data.append(value)
        if name is None:
            continue
        raw = "\n".join(data)
        events.append((seq, name, raw if raw == "[DONE]" else json.loads(raw)))
    return events


def stream(
    http: httpx.Client, method: str, path: str, body: Any = None, last_id: int | None = None
) -> list[Received]:
    """One SSE request read to its end; every event is validated against OpenAI's spec."""
    headers = {} if last_id is None else {"Last-Event-ID": str(last_id)}
    with http.stream(method, path, json=body, headers=headers) as response:
        assert response.status_code == 200, response.read()
        text_ = "".join(response.iter_text())
    validate_sse_stream(text_)
    return parse_sse(text_)


def without_done(events: list[Received]) -> list[Received]:
    assert events[-1][1] == "done", events[-3:]
    return events[:-1]


def answer(events: list[Received], message_id: str) -> str:
    return "".join(
        part["text"]["value"]
        for _, name, data in events
        if name == "thread.message.delta" and data["id"] == message_id
        for part in data["delta"]["content"]
    )


def select_rows(database_url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """A query's rows, read straight from the server's database."""

    async def read() -> list[tuple[Any, ...]]:
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as conn:
                return [tuple(row) for row in await conn.execute(text(sql), params)]
        finally:
            await engine.dispose()

    return asyncio.run(read())


def log_rows(database_url: str, run_id: str) -> list[tuple[int, str, int]]:
    """The run's log as stored: (seq, event, bytes of data) per row."""
    sql = "SELECT seq, event, length(data) FROM run_events WHERE run_id = :run ORDER BY seq"
    return [(seq, name, size) for seq, name, size in select_rows(database_url, sql, run=run_id)]


def compacted_log(database_url: str, run_id: str) -> list[tuple[int, str, int]]:
    """The run's log once it is one row: an ended run's log is compacted soon after it
    ends (app.runs.compaction), not in the transaction that ends it."""
    wait_for(lambda: len(log_rows(database_url, run_id)) == 1, 10, f"{run_id}'s log compacted")
    return log_rows(database_url, run_id)


def wait_for(cond: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def app_server(
    tmp_path: Path, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> Iterator[tuple[AppServer, str]]:
    """The real app in this process (its runtime reachable), its models on the fake upstream."""
    (tmp_path / "db").mkdir(parents=True, exist_ok=True)
    with fresh_database(tmp_path / "db") as url:
        env = server_env(url, upstream, tmp_path / "config")
        monkeypatch.setenv("FAKE_UPSTREAM_KEY", env["FAKE_UPSTREAM_KEY"])
        settings = make_settings(
            tmp_path / "data",
            url,
            model_config_file=Path(env["OPENGROVE_MODEL_CONFIG"]),
            llm_timeout=5,
            llm_retry_base_delay=0.05,
            **overrides,
        )
        with AppServer(settings) as server:
            yield server, url


# ---------------------------------------------------------------------------- compaction


def test_compacted_log_replays_the_live_stream(
    base_url: str, upstream: FakeUpstream, database_url: str
) -> None:
    """Text, a tool call's argument deltas, requires_action, then a second turn: after the run
    ends its log is one compressed row, and every replay is byte-for-byte the live stream."""
    words = " ".join(f"w{i}" for i in range(150))
    upstream.script(
        FakeReply(
            text=f"Checking {words}",
            tool_calls=[FakeToolCall("get_weather", {"city": "Paris " * 30})],
            arg_chunk_chars=5,
        ),
        FakeReply(text=f"It is warm {words}"),
    )
    with httpx.Client(base_url=f"{base_url}/v1", timeout=30) as http:
        assistant = http.post("/assistants", json={"model": "fake-model", "tools": [WEATHER]})
        body = {
            "assistant_id": assistant.json()["id"],
            "thread": {"messages": [{"role": "user", "content": "Weather?"}]},
            "stream": True,
        }
        first = without_done(stream(http, "POST", "/threads/runs", body))
        stopped = first[-1]
        assert stopped[1] == "thread.run.requires_action"
        run = stopped[2]
        path = f"/threads/{run['thread_id']}/runs/{run['id']}"
        call = run["required_action"]["submit_tool_outputs"]["tool_calls"][0]
        outputs = {"tool_outputs": [{"tool_call_id": call["id"], "output": "warm"}], "stream": True}
        second = without_done(stream(http, "POST", f"{path}/submit_tool_outputs", outputs))
        assert second[-1][1] == "thread.run.completed"
        live = first + second
        ids = [seq for seq, _, _ in live]
        assert ids == list(range(len(live)))  # one attempt: no gap

        # The log: one row, numbered as the run's last event, a fraction of the stream's size.
        rows = compacted_log(database_url, run["id"])
        assert [(seq, name) for seq, name, _ in rows] == [(ids[-1], COMPACTED)]
        sent = sum(len(orjson.dumps(data)) for _, _, data in live)
        assert rows[0][2] < sent / 5, (rows[0][2], sent)

        # From the start: the first connection's events (a stream ends at requires_action);
        # after requires_action: the second's.
        assert without_done(stream(http, "GET", f"{path}?stream=true")) == first
        assert (
            without_done(stream(http, "GET", f"{path}?stream=true", last_id=stopped[0])) == second
        )
        # From any id, deltas' included (they were batches of deltas, committed together):
        # exactly what followed it.
        deltas = [seq for seq, name, _ in live if name.endswith(".delta")]
        assert len(deltas) > 300
        for after in [*deltas[::37], deltas[-1], 0, 1, ids[-2]]:
            got = without_done(stream(http, "GET", f"{path}?stream=true", last_id=after))
            part = first if after < stopped[0] else second
            assert got == [e for e in part if e[0] > after], after
        assert [
            name for _, name, _ in stream(http, "GET", f"{path}?stream=true", None, ids[-1])
        ] == ["done"]
        # The same text as the messages hold.
        messages = http.get(f"/threads/{run['thread_id']}/messages", params={"order": "asc"})
        stored = [m for m in messages.json()["data"] if m["role"] == "assistant"]
        assert [answer(live, m["id"]) for m in stored] == [
            m["content"][0]["text"]["value"] for m in stored
        ]
        assert [answer(live, m["id"]) for m in stored] == [
            f"Checking {words}",
            f"It is warm {words}",
        ]


def test_every_ending_compacts(base_url: str, upstream: FakeUpstream, database_url: str) -> None:
    """A failed run (by the executor) and a cancelled one (by the API, from requires_action):
    one row each, replayed to the same final events."""
    with httpx.Client(base_url=f"{base_url}/v1", timeout=30) as http:
        assistant = http.post("/assistants", json={"model": "fake-model", "tools": [WEATHER]})
        body = {
            "assistant_id": assistant.json()["id"],
            "thread": {"messages": [{"role": "user", "content": "hi"}]},
            "stream": True,
        }
        upstream.script(*[FakeReply.error(500)] * 3)
        failed = without_done(stream(http, "POST", "/threads/runs", body))
        assert failed[-1][1] == "thread.run.failed"

        upstream.script(FakeReply(tool_calls=[FakeToolCall("get_weather", {"city": "Oslo"})]))
        waiting = without_done(stream(http, "POST", "/threads/runs", body))
        run = waiting[-1][2]
        path = f"/threads/{run['thread_id']}/runs/{run['id']}"
        assert http.post(f"{path}/cancel").json()["status"] == "cancelled"
        cancelled = without_done(stream(http, "GET", f"{path}?stream=true", last_id=waiting[-1][0]))
        assert [name for _, name, _ in cancelled] == [
            "thread.run.step.cancelled",
            "thread.run.cancelled",
        ]
        for events in (failed, waiting + cancelled):
            run = events[-1][2]
            rows = compacted_log(database_url, run["id"])
            assert [(seq, name) for seq, name, _ in rows] == [(events[-1][0], COMPACTED)]
            path = f"/threads/{run['thread_id']}/runs/{run['id']}"
            replay = without_done(stream(http, "GET", f"{path}?stream=true", last_id=-1))
            if events is failed:
                assert replay == failed
            else:
                assert replay == waiting  # up to requires_action, as a stream goes
                after = without_done(
                    stream(http, "GET", f"{path}?stream=true", last_id=waiting[-1][0])
                )
                assert after == cancelled


# ---------------------------------------------------------------------------- pruning


def test_old_logs_of_ended_runs_are_pruned(
    tmp_path: Path, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    with app_server(tmp_path, upstream, monkeypatch, event_retention_seconds=1.0) as (server, url):
        with httpx.Client(base_url=f"{server.base_url}/v1", timeout=30) as http:
            assistant = http.post("/assistants", json={"model": "fake-model", "tools": [WEATHER]})

            def streamed_run(content: str) -> list[Received]:
                body = {
                    "assistant_id": assistant.json()["id"],
                    "thread": {"messages": [{"role": "user", "content": content}]},
                    "stream": True,
                }
                return without_done(stream(http, "POST", "/threads/runs", body))

            old = streamed_run("old one")
            upstream.script(FakeReply(tool_calls=[FakeToolCall("get_weather", {"city": "Rome"})]))
            waiting = streamed_run("old, still waiting")
            assert waiting[-1][1] == "thread.run.requires_action"
            time.sleep(1.2)  # both are older than the retention now
            young = streamed_run("young one")
            runs = {
                name: events[-1][2]
                for name, events in [("old", old), ("waiting", waiting), ("young", young)]
            }

            server.call(server.runtime.housekeep_once())

            assert log_rows(url, runs["old"]["id"]) == []
            assert len(log_rows(url, runs["waiting"]["id"])) > 1  # active: kept, however old
            assert [name for _, name, _ in compacted_log(url, runs["young"]["id"])] == [COMPACTED]

            # The ended run itself and its messages stay; its stream is its final event alone,
            # numbered as it was.
            run = runs["old"]
            path = f"/threads/{run['thread_id']}/runs/{run['id']}"
            assert http.get(path).json()["status"] == "completed"
            messages = http.get(f"/threads/{run['thread_id']}/messages").json()["data"]
            assert [m["content"][0]["text"]["value"] for m in messages] == [
                "Echo: old one",
                "old one",
            ]
            final = old[-1]
            replay = stream(http, "GET", f"{path}?stream=true")
            assert [(seq, name) for seq, name, _ in replay] == [
                (final[0], "thread.run.completed"),
                (None, "done"),
            ]
            assert replay[0][2]["id"] == run["id"] and replay[0][2]["status"] == "completed"
            resumed = stream(http, "GET", f"{path}?stream=true", last_id=3)
            assert [name for _, name, _ in resumed] == ["thread.run.completed", "done"]
            at_end = stream(http, "GET", f"{path}?stream=true", last_id=final[0])
            assert [name for _, name, _ in at_end] == ["done"]

            # The waiting run goes on as if nothing happened.
            run = runs["waiting"]
            path = f"/threads/{run['thread_id']}/runs/{run['id']}"
            call = run["required_action"]["submit_tool_outputs"]["tool_calls"][0]
            outputs = {"tool_outputs": [{"tool_call_id": call["id"], "output": "x"}]}
            upstream.script(FakeReply(text="Rome is warm."))
            rest = without_done(
                stream(http, "POST", f"{path}/submit_tool_outputs", {**outputs, "stream": True})
            )
            assert rest[-1][1] == "thread.run.completed"
            assert without_done(stream(http, "GET", f"{path}?stream=true")) == waiting

            # Pruning again finds nothing more to do; a young log is left alone.
            server.call(server.runtime.housekeep_once())
            assert [name for _, name, _ in compacted_log(url, runs["young"]["id"])] == [COMPACTED]


# ---------------------------------------------------------------------------- slow clients


def _stalled_stream(port: int, path: str, body: dict[str, Any]) -> http.client.HTTPResponse:
    """A raw-socket client with a tiny receive buffer that reads the response head and a
    little, then stops reading (the caller reads the rest much later)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.sock = sock
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    return response


def test_a_client_that_stops_reading_is_dropped(
    tmp_path: Path, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ~9 MB of answer in 3000 deltas: far more than the socket buffers between the server and
    # a client that reads nothing.
    words = [f"{i:05d}{'x' * 3000}" for i in range(3000)]
    upstream.script(FakeReply(text=" ".join(words)))
    with app_server(tmp_path, upstream, monkeypatch, stream_send_timeout=1.0) as (server, _):
        hub = server.runtime.hub
        with httpx.Client(base_url=f"{server.base_url}/v1", timeout=60) as http:
            assistant = http.post("/assistants", json={"model": "fake-model"}).json()
            thread = http.post(
                "/threads", json={"messages": [{"role": "user", "content": "Talk."}]}
            ).json()
            slow = _stalled_stream(
                server.port,
                f"/v1/threads/{thread['id']}/runs",
                {"assistant_id": assistant["id"], "stream": True},
            )
            head = slow.read(200)  # the first event's start; then it reads nothing
            assert head.startswith(b"id: 0\nevent: thread.run.created")
            run = http.get(f"/threads/{thread['id']}/runs").json()["data"][0]
            path = f"/threads/{thread['id']}/runs/{run['id']}"

            # Another client streams the run meanwhile, and gets all of it.
            full: list[list[Received]] = []
            reader = threading.Thread(
                target=lambda: full.append(stream(http, "GET", f"{path}?stream=true")),
                daemon=True,
            )
            reader.start()
            reader.join(120)
            assert full and full[0][-2][1] == "thread.run.completed"
            everything = without_done(full[0])
            assert [seq for seq, _, _ in everything] == list(range(len(everything)))
            stored = http.get(f"/threads/{thread['id']}/messages").json()["data"][0]
            text_ = stored["content"][0]["text"]["value"]
            assert text_ == " ".join(words) == answer(everything, stored["id"])
            assert http.get(path).json()["status"] == "completed"

            # The stalled stream was dropped: it follows the run no more, though its client
            # still holds the connection, unread.
            wait_for(lambda: hub.subscriber_count == 0, 30, "the stalled stream to be dropped")

            # What the client finds when it reads again: events with no gap, then an `error`
            # event (no id, no `done`), then the end of the response.
            body = head + slow.read()
            got = parse_sse(body.decode())
            assert got[-1][:2] == (None, "error")
            error = got[-1][2]
            assert error["code"] == "stream_timeout" and error["type"] == "server_error"
            assert "Last-Event-ID" in error["message"]
            seen = got[:-1]
            assert seen and seen == everything[: len(seen)]
            assert len(seen) < len(everything)  # it was dropped before the end

            # It resumes where it was, as any broken stream does.
            rest = stream(http, "GET", f"{path}?stream=true", last_id=seen[-1][0])
            assert without_done(rest) == everything[len(seen) :]


def test_a_stream_far_behind_holds_a_bounded_queue() -> None:
    """Events published faster than a stream takes them: its queue never holds more than
    MAX_QUEUED; past that it is emptied and told to read the log instead."""

    async def scenario() -> tuple[int, int, bool]:
        hub = EventHub()
        queue = hub.subscribe("run_x")
        hub.position("run_x", 0)
        biggest = 0
        for seq in range(1, 5001):
            hub.publish("run_x", [Event(seq, "thread.message.delta", {"n": seq})])
            biggest = max(biggest, queue.qsize())
        told_to_catch_up = queue.get_nowait().seq == -1
        return biggest, hub.overflows, told_to_catch_up

    biggest, overflows, told = asyncio.run(scenario())
    assert biggest <= MAX_QUEUED
    assert overflows >= 1 and told


# ---------------------------------------------------------------------------- one poller


class _LogReads:
    """SELECTs on run_events made by the engines of this process (the in-process server):
    the watcher's looks (one grouped query for every followed run) apart from the reads of
    one run's events (a stream's first look, or the watcher fetching what it found)."""

    def __init__(self) -> None:
        self.looks = 0
        self.run_reads = 0
        self._lock = threading.Lock()

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        text = statement.lstrip().upper()
        if not (text.startswith("SELECT") and "RUN_EVENTS" in text):
            return
        with self._lock:
            if "GROUP BY" in text:
                self.looks += 1
            else:
                self.run_reads += 1


def test_many_streams_one_poller(
    tmp_path: Path, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streams on an API process of runs that another process executes: 6 of one run, one
    each of 5 more. While they wait the log is read once per watcher tick, whatever the number
    of streams; when the runs execute, every stream gets every event from the watcher's reads
    (none reads the log itself after its first look)."""
    reads = _LogReads()
    sa_event.listen(Engine, "before_cursor_execute", reads)
    try:
        with app_server(tmp_path, upstream, monkeypatch, run_workers=False) as (server, url):
            hub, watcher = server.runtime.hub, server.runtime.watcher
            assert watcher is not None
            base = f"{server.base_url}/v1"
            with httpx.Client(base_url=base, timeout=60) as http:
                assistant = http.post("/assistants", json={"model": "fake-model"}).json()
            results: dict[str, list[Received]] = {}
            threads: list[threading.Thread] = []

            def open_stream(key: str, method: str, path: str, body: Any = None) -> None:
                def read() -> None:
                    with httpx.Client(base_url=base, timeout=120) as client:
                        results[key] = stream(client, method, path, body)

                threads.append(threading.Thread(target=read, name=key, daemon=True))
                threads[-1].start()

            texts = [f"run number {i}" for i in range(6)]
            for i, content in enumerate(texts):
                body = {
                    "assistant_id": assistant["id"],
                    "thread": {"messages": [{"role": "user", "content": content}]},
                    "stream": True,
                }
                open_stream(f"create-{i}", "POST", "/threads/runs", body)
            wait_for(lambda: len(hub.followed()) == 6, 30, "6 streams following their runs")
            # 5 more streams of the first run, each from its start (GET ?stream=true).
            first_thread, first_run = _runs_by_content(url)[texts[0]]
            for k in range(5):
                open_stream(
                    f"follow-{k}", "GET", f"/threads/{first_thread}/runs/{first_run}?stream=true"
                )
            wait_for(lambda: hub.subscriber_count == 11, 30, "11 streams")
            wait_for(lambda: hub.log_reads == 5, 30, "the 5 streams' first reads")
            # (hub.log_reads counts a read as it starts: wait for its query to be sent.)
            wait_for(lambda: reads.run_reads == 5, 30, "the first reads' queries")

            # Waiting: the only reads of the log are the watcher's, one query per look
            # (give or take the one in flight at each end of the second), not one per stream.
            polls, looks = watcher.polls, reads.looks
            time.sleep(1.0)
            assert reads.run_reads == 5
            assert abs((reads.looks - looks) - (watcher.polls - polls)) <= 1
            if server.runtime.db.is_sqlite:
                assert watcher.polls - polls >= 2  # it polls: ~5 times a second
            assert hub.log_reads == 5

            # Another process executes the runs; every stream gets its run, whole.
            env = server_env(url, upstream, tmp_path / "worker-config")
            worker = ServerProcess(tmp_path / "worker", env=env, command="worker").start()
            try:
                for t in threads:
                    t.join(120)
            finally:
                worker.stop()
            assert sorted(results) == sorted(
                [f"create-{i}" for i in range(6)] + [f"follow-{k}" for k in range(5)]
            )
            for key, events in results.items():
                content = texts[int(key.split("-")[1])] if key.startswith("create") else texts[0]
                events = without_done(events)
                assert events[-1][1] == "thread.run.completed", (key, events[-3:])
                seqs = [seq for seq, _, _ in events]
                assert seqs == list(range(len(events))), key
                message = next(d for _, n, d in events if n == "thread.message.completed")
                assert answer(events, message["id"]) == f"Echo: {content}"
            assert all(results[f"follow-{k}"] == results["create-0"] for k in range(5))
            # No stream read the log after its first look: the watcher read for all of them.
            assert hub.log_reads == 5
            assert watcher.fanned_out > 0
    finally:
        sa_event.remove(Engine, "before_cursor_execute", reads)


def _runs_by_content(database_url: str) -> dict[str, tuple[str, str]]:
    """message text -> (thread id, run id), for runs made with one user message each."""
    rows = select_rows(
        database_url,
        "SELECT m.content, r.thread_id, r.id FROM runs r "
        "JOIN messages m ON m.thread_id = r.thread_id AND m.role = 'user'",
    )
    found = {}
    for content, thread_id, run_id in rows:
        if isinstance(content, str):
            content = json.loads(content)
        found[content[0]["text"]["value"]] = (thread_id, run_id)
    return found
