"""Two API processes and a separate worker process on one database (the compose topology,
without containers): runs cross processes, and a run whose worker is killed mid-answer is
resumed by the next worker — its answer made again, never duplicated."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import server_env
from tests.databases import fresh_database
from tests.fake_upstream import FakeReply, FakeToolCall, FakeUpstream
from tests.server_process import ServerProcess
from tests.spec_check import validate_sse_stream

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


class Cluster:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.api_a = ServerProcess(root / "api-a", env={**env, "OPENGROVE_RUN_WORKERS": "false"})
        self.api_b = ServerProcess(root / "api-b", env={**env, "OPENGROVE_RUN_WORKERS": "false"})
        self.workers: list[ServerProcess] = []

    def start_worker(self) -> ServerProcess:
        worker = ServerProcess(
            self.root / f"worker-{len(self.workers)}", env=self.env, command="worker"
        ).start()
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for proc in [self.api_a, self.api_b, *self.workers]:
            proc.stop()


@pytest.fixture
def cluster(tmp_path: Path, upstream: FakeUpstream) -> Iterator[Cluster]:
    with fresh_database(tmp_path) as url:
        env = server_env(url, upstream, tmp_path / "config")
        env["OPENGROVE_RUN_LEASE_SECONDS"] = "2"
        cluster = Cluster(tmp_path, env)
        try:
            cluster.api_a.start()  # migrates first; the others find the schema in place
            cluster.api_b.start()
            cluster.start_worker()
            yield cluster
        finally:
            cluster.stop()


def sse(base_url: str, path: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    with httpx.stream(
        "POST", f"{base_url}/v1{path}", json={**body, "stream": True}, timeout=30
    ) as response:
        assert response.status_code == 200, response.read()
        return validate_sse_stream("".join(response.iter_text()))


def wait_for(
    client: openai.OpenAI, thread_id: str, run_id: str, statuses: set[str], timeout: float = 20
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        run = client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
        if run.status in statuses or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def test_runs_cross_processes_and_survive_a_dead_worker(
    cluster: Cluster, upstream: FakeUpstream
) -> None:
    a = openai.OpenAI(base_url=f"{cluster.api_a.base_url}/v1", api_key="k", max_retries=0)
    b = openai.OpenAI(base_url=f"{cluster.api_b.base_url}/v1", api_key="k", max_retries=0)
    assistant = a.beta.assistants.create(model="fake-model", tools=[TOOL])

    # Created and streamed on A, executed by the worker process.
    upstream.script(
        FakeReply(tool_calls=[FakeToolCall("lookup", {"q": "x"})]),
        FakeReply(text="answer from another process"),
    )
    events = sse(
        cluster.api_a.base_url,
        "/threads/runs",
        {
            "assistant_id": assistant.id,
            "thread": {"messages": [{"role": "user", "content": "go"}]},
        },
    )
    assert [n for n, _ in events][-2:] == ["thread.run.requires_action", "done"]
    run = dict(events)["thread.run.requires_action"]
    call_id = run["required_action"]["submit_tool_outputs"]["tool_calls"][0]["id"]

    # Resumed and streamed on B.
    resumed = sse(
        cluster.api_b.base_url,
        f"/threads/{run['thread_id']}/runs/{run['id']}/submit_tool_outputs",
        {"tool_outputs": [{"tool_call_id": call_id, "output": "42"}]},
    )
    names = [n for n, _ in resumed]
    assert names[-2:] == ["thread.run.completed", "done"]
    deltas = "".join(
        d["delta"]["content"][0]["text"]["value"] for n, d in resumed if n == "thread.message.delta"
    )
    assert deltas == "answer from another process"
    stored = b.beta.threads.messages.list(run["thread_id"], run_id=run["id"]).data[0]
    assert stored.content[0].text.value == deltas

    # Kill the worker mid-answer: the next worker resumes the run and makes the answer again.
    upstream.script(
        FakeReply(text=" ".join(["slow"] * 100), token_delay=0.2),
        FakeReply(text="the answer, made again"),
    )
    thread = a.beta.threads.create(messages=[{"role": "user", "content": "slow please"}])
    sent_before = len(upstream.requests)
    doomed = a.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert wait_for(b, thread.id, doomed.id, {"in_progress"}).status == "in_progress"
    upstream.wait_for_requests(sent_before + 1)  # the model is mid-answer when the worker dies
    time.sleep(0.6)  # some deltas are published, and some persisted
    cluster.workers[0].kill()
    cluster.start_worker()
    # A client following the run's stream (from the start) sees it through to the end.
    with httpx.stream(
        "GET",
        f"{cluster.api_b.base_url}/v1/threads/{thread.id}/runs/{doomed.id}",
        params={"stream": "true"},
        timeout=30,
    ) as response:
        followed = validate_sse_stream("".join(response.iter_text()))
    assert [n for n, _ in followed][-2:] == ["thread.run.completed", "done"]
    ended = wait_for(b, thread.id, doomed.id, {"failed", "completed", "cancelled"})
    assert ended.status == "completed", ended.last_error
    answers = b.beta.threads.messages.list(thread.id, run_id=doomed.id).data
    assert [m.content[0].text.value for m in answers] == ["the answer, made again"]
    assert len(upstream.requests) == sent_before + 2  # the interrupted call, made once more

    # The replacement worker takes new work on the same thread.
    upstream.script(FakeReply(text="back"))
    after = a.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    final = wait_for(b, thread.id, after.id, {"completed", "failed"})
    assert final.status == "completed", final.last_error
