"""Durable runs and resumable streams, through the real server process.

The fast version of bench/fault_bench.py (same helpers): one `opengrove serve`, SIGKILLed
twice mid-answer; each run must complete with its answer exactly once, and the client that
reconnects with Last-Event-ID must see every event once. Plus resuming a stream that merely
broke (no crash), and a bad Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.fault_bench import (
    DELTA,
    ClientView,
    Settings,
    Summary,
    Topology,
    create_assistant,
    create_body,
    fault_rounds,
    new_client,
    read_stream,
    resume_url,
)
from tests.conftest import server_env
from tests.databases import fresh_database
from tests.fake_upstream import FakeUpstream
from tests.server_process import ServerProcess

TOKEN_DELAY = 0.03  # seconds per streamed word: a 40-word answer takes ~1.2 s


@pytest.fixture
def slow_upstream(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    """The fake upstream answering with its default echo, one word every TOKEN_DELAY s."""
    saved = upstream.token_delay
    upstream.token_delay = TOKEN_DELAY
    try:
        yield upstream
    finally:
        upstream.token_delay = saved


def test_server_killed_mid_stream_twice(tmp_path: Path, slow_upstream: FakeUpstream) -> None:
    with fresh_database(tmp_path / "db") as url:
        (tmp_path / "db").mkdir(parents=True, exist_ok=True)
        env = server_env(url, slow_upstream, tmp_path / "config")
        top = Topology(ServerProcess(tmp_path / "server", env=env), None)
        summary = Summary("test")
        try:
            top.start()
            asyncio.run(
                fault_rounds(
                    top,
                    ["server", "server"],
                    random.Random(7),
                    Settings(words=40, kill_delay=(0.1, 0.5), stuck_after=30),
                    summary,
                    deadline=float("inf"),
                    progress=False,
                )
            )
        finally:
            top.stop()
        assert summary.aborted is None, summary.aborted
        assert len(summary.rounds) == 2
        for res in summary.rounds:
            assert res.problems == [], (res, top.logs()[-3000:])
            assert not res.kill_missed, "the kill landed after the answer: make it slower"
            assert res.status == "completed"
            assert (res.stored, res.seen) == ("ok", "ok")
            assert res.stream_gaps == res.stream_duplicates == 0
            assert res.recovery is not None


async def _broken_then_resumed(base: str, text: str) -> tuple[ClientView, ClientView]:
    """A stream the client hangs up after a few deltas, resumed with Last-Event-ID; then a
    replay of the whole run from the start (no header)."""
    assistant_id = await create_assistant(base)
    view = ClientView()
    async with new_client() as client, asyncio.timeout(30):
        ending = await read_stream(
            client,
            "POST",
            f"{base}/v1/threads/runs",
            view,
            0,
            body=create_body(assistant_id, text),
            stop=lambda v: v.count(DELTA) >= 5,
        )
        assert ending == "stopped"
        assert view.last_id is not None
        ending = await read_stream(
            client,
            "GET",
            f"{resume_url(base, view)}?stream=true",
            view,
            1,
            headers={"Last-Event-ID": str(view.last_id)},
        )
        assert ending == "done"
        replay = ClientView()
        assert await read_stream(
            client, "GET", f"{resume_url(base, view)}?stream=true", replay, 0
        ) == ("done")
    return view, replay


def test_stream_resumed_with_last_event_id_gets_exactly_the_rest(
    base_url: str, slow_upstream: FakeUpstream
) -> None:
    text = " ".join(f"r{i}" for i in range(30))
    view, replay = asyncio.run(_broken_then_resumed(base_url, text))
    first = [e for e in view.events if e.conn == 0]
    rest = [e for e in view.events if e.conn == 1]
    assert first and rest and first[-1].event == DELTA
    # Exactly the remaining events: the two connections together are the whole log, in order.
    as_seen = [(e.seq, e.event, e.data) for e in view.events]
    assert as_seen == [(e.seq, e.event, e.data) for e in replay.events]
    assert rest[0].seq == first[-1].seq + 1
    ids = [e.seq for e in view.events if e.seq is not None]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # no crash: no gap, no duplicate
    assert [e.event for e in rest][-2:] == ["thread.run.completed", "done"]
    message_id = next(e.data["id"] for e in view.events if e.event == "thread.message.completed")
    answer = "".join(
        part["text"]["value"]
        for e in view.events
        if e.event == DELTA and e.data["id"] == message_id
        for part in e.data["delta"]["content"]
    )
    assert answer == f"Echo: {text}"


async def _resumed_after(base: str, ids: list[str]) -> tuple[ClientView, list[ClientView]]:
    """A run streamed to its end; then its stream resumed after each of `ids` ("END": the
    completed event's id, "END+n": n past it), each bounded: a stream that never ends fails."""
    assistant_id = await create_assistant(base)
    whole = ClientView()
    views: list[ClientView] = []
    async with new_client() as client, asyncio.timeout(60):
        url = f"{base}/v1/threads/runs"
        ending = await read_stream(
            client, "POST", url, whole, 0, body=create_body(assistant_id, "the end")
        )
        assert ending == "done"
        end = whole.last_id
        assert end is not None
        for spec in ids:
            last_id = str(end + int(spec[3:] or 0)) if spec.startswith("END") else spec
            view = ClientView()
            async with asyncio.timeout(10):
                ending = await read_stream(
                    client,
                    "GET",
                    f"{resume_url(base, whole)}?stream=true",
                    view,
                    0,
                    headers={"Last-Event-ID": last_id},
                )
            assert ending == "done", last_id
            views.append(view)
    return whole, views


def test_stream_resumed_after_the_runs_end_ends_at_once(
    base_url: str, upstream: FakeUpstream
) -> None:
    """A client that saw thread.run.completed but lost the connection before `done` gets
    `done` at once on reconnecting, not a stream that waits forever; an id below the first
    means from the start."""
    whole, views = asyncio.run(_resumed_after(base_url, ["-1", "-7", "END", "END+0"]))
    final = whole.events[-2]
    assert final.event == "thread.run.completed" and final.seq is not None
    replay = [(e.seq, e.event, e.data) for e in whole.events]
    assert [(e.seq, e.event, e.data) for e in views[0].events] == replay
    assert [(e.seq, e.event, e.data) for e in views[1].events] == replay
    assert [e.event for e in views[2].events] == ["done"]
    assert [e.event for e in views[3].events] == ["done"]


@pytest.mark.parametrize("bad", ["abc", "1.5", "12abc", "100000"])
def test_bad_last_event_id_is_a_400(base_url: str, upstream: FakeUpstream, bad: str) -> None:
    """Not a number, or a number no event of the run ever had."""
    with httpx.Client(base_url=f"{base_url}/v1", timeout=30) as http:
        assistant = http.post("/assistants", json={"model": "fake-model"}).json()
        run = http.post(
            "/threads/runs",
            json={
                "assistant_id": assistant["id"],
                "thread": {"messages": [{"role": "user", "content": "hi"}]},
            },
        ).json()
        response = http.get(
            f"/threads/{run['thread_id']}/runs/{run['id']}",
            params={"stream": "true"},
            headers={"Last-Event-ID": bad},
        )
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "Last-Event-ID"
    assert bad in error["message"]
