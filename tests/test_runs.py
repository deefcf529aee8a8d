"""Runs through the official SDK against the fake upstream, via the real litellm path."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest
from openai import AssistantEventHandler

from tests.fake_upstream import FakeReply, FakeToolCall, FakeUpstream
from tests.spec_check import validate_schema

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}


@pytest.fixture
def assistant(client: openai.OpenAI) -> Any:
    return client.beta.assistants.create(
        model="fake-model", instructions="You are terse.", tools=[WEATHER]
    )


def texts(client: openai.OpenAI, thread_id: str) -> list[tuple[str, str]]:
    return [
        (m.role, m.content[0].text.value)
        for m in client.beta.threads.messages.list(thread_id, order="asc")
    ]


def test_create_and_poll_completes(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    upstream.script(FakeReply(text="Hello from the model."))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Say hello"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
    )
    assert run.status == "completed", run.last_error
    assert run.id.startswith("run_")
    assert run.started_at and run.completed_at and run.failed_at is None
    assert run.model == "fake-model" and run.instructions == "You are terse."
    assert run.tools[0].function.name == "get_weather"
    assert run.usage.total_tokens == run.usage.prompt_tokens + run.usage.completion_tokens > 0
    assert texts(client, thread.id) == [("user", "Say hello"), ("assistant", "Hello from the model.")]
    reply = client.beta.threads.messages.list(thread.id, run_id=run.id).data
    assert len(reply) == 1 and reply[0].assistant_id == assistant.id and reply[0].run_id == run.id
    # What reached the model: the instructions as the system message, then the thread.
    sent = upstream.last_request
    assert sent["messages"][0] == {"role": "system", "content": "You are terse."}
    assert sent["messages"][1] == {"role": "user", "content": "Say hello"}
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["stream"] is True
    steps = client.beta.threads.runs.steps.list(run_id=run.id, thread_id=thread.id).data
    assert [s.type for s in steps] == ["message_creation"]
    assert steps[0].status == "completed"
    assert steps[0].step_details.message_creation.message_id == reply[0].id
    assert steps[0].usage.total_tokens > 0
    step = client.beta.threads.runs.steps.retrieve(steps[0].id, thread_id=thread.id, run_id=run.id)
    assert step.id == steps[0].id
