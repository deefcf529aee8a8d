"""A run left waiting for tool outputs expires (OpenAI: after 10 minutes; here, 2 s)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import server_env
from tests.databases import fresh_database
from tests.fake_upstream import FakeReply, FakeToolCall, FakeUpstream
from tests.server_process import ServerProcess


@pytest.fixture
def quick_expiry_client(tmp_path: Path, upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    with fresh_database(tmp_path) as url:
        env = server_env(url, upstream, tmp_path / "config")
        env.update(OPENGROVE_RUN_EXPIRY_SECONDS="2", OPENGROVE_RUN_LEASE_SECONDS="1.5")
        server = ServerProcess(tmp_path / "server", env=env).start()
        try:
            yield openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k", max_retries=0)
        finally:
            server.stop()


def test_requires_action_expires(
    quick_expiry_client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    client = quick_expiry_client
    assistant = client.beta.assistants.create(
        model="fake-model",
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    )
    upstream.script(FakeReply(tool_calls=[FakeToolCall("f", {})]))
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": "x"}]},
        poll_interval_ms=50,
    )
    assert run.status == "requires_action"
    call_id = run.required_action.submit_tool_outputs.tool_calls[0].id
    assert run.expires_at is not None and run.expires_at - run.created_at <= 3
    deadline = time.monotonic() + 15
    while run.status == "requires_action" and time.monotonic() < deadline:
        time.sleep(0.2)
        run = client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
    assert run.status == "expired" and run.required_action is None
    step = client.beta.threads.runs.steps.list(run_id=run.id, thread_id=run.thread_id).data[0]
    assert step.status == "expired" and step.expired_at is not None
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.submit_tool_outputs(
            run_id=run.id,
            thread_id=run.thread_id,
            tool_outputs=[{"tool_call_id": call_id, "output": "late"}],
        )
