"""Runs through each wire dialect litellm speaks to the fake upstream: OpenAI chat completions,
Anthropic Messages and Ollama's native chat API, each reached through a model alias of the
server's model config (see `server_env` in conftest.py). Real server, real litellm, real HTTP.

Every test is parametrized over the dialects; what reaches the upstream is asserted in the
dialect's own format (e.g. tool outputs as Anthropic `tool_result` blocks or Ollama `tool`
messages).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import AssistantEventHandler

from tests.fake_upstream import (
    ANTHROPIC,
    DIALECTS,
    OLLAMA,
    OPENAI,
    FakeReply,
    FakeToolCall,
    FakeUpstream,
    RecordedRequest,
)
from tests.helpers import WEATHER, cite_first_result, texts, upload

ALIASES = {OPENAI: "fake-model", ANTHROPIC: "fake-anthropic", OLLAMA: "fake-ollama"}
PATHS = {OPENAI: "/v1/chat/completions", ANTHROPIC: "/v1/messages", OLLAMA: "/api/chat"}
# The status each provider uses for "overloaded, try again".
OVERLOADED = {OPENAI: 503, ANTHROPIC: 529, OLLAMA: 503}
SECRET = "The launch code is AZURE-HERON-42. Keep it secret."


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def assistant(client: openai.OpenAI, dialect: str) -> Iterator[Any]:
    assistant = client.beta.assistants.create(
        model=ALIASES[dialect], instructions="You are terse.", tools=[WEATHER]
    )
    yield assistant
    client.beta.assistants.delete(assistant.id)


def sent(upstream: FakeUpstream, dialect: str, index: int = -1) -> RecordedRequest:
    """A request the upstream received, checked to be in the dialect's format at its path."""
    record = upstream.recorded[index]
    assert (record.dialect, record.path) == (dialect, PATHS[dialect])
    if dialect == ANTHROPIC:
        assert record.headers["x-api-key"] == "fake-key"
        assert record.headers["anthropic-version"]
    else:
        assert record.headers["authorization"] == "Bearer fake-key"
    return record


def test_plain_answer(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any, dialect: str
) -> None:
    usage = {"prompt_tokens": 31, "completion_tokens": 7, "total_tokens": 38}
    upstream.script(FakeReply(text="Hello from the model.", usage=usage))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Say hello"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
    )
    assert run.status == "completed", run.last_error
    assert texts(client, thread.id) == [
        ("user", "Say hello"),
        ("assistant", "Hello from the model."),
    ]
    # The provider's own counts (input/output tokens, prompt_eval/eval counts), not an estimate.
    assert (run.usage.prompt_tokens, run.usage.completion_tokens) == (31, 7)
    assert run.usage.total_tokens == 38

    record = sent(upstream, dialect)
    assert record.stream
    assert record.messages[:2] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello"},
    ]
    # The function tool is offered natively (not emulated through a JSON-mode prompt).
    assert record.tool_names == ["get_weather"]
    body = record.body
    if dialect == ANTHROPIC:
        assert body["model"] == "claude-fake" and body["max_tokens"] > 0
        assert body["system"] == [{"type": "text", "text": "You are terse."}]
        assert body["tools"][0]["input_schema"] == WEATHER["function"]["parameters"]
    elif dialect == OLLAMA:
        assert body["model"] == "llama-fake" and "format" not in body
        assert body["messages"][0]["content"] == "You are terse."
        assert body["tools"][0]["function"]["name"] == "get_weather"
    else:
        assert body["model"] == "fake-model"
        assert body["stream_options"] == {"include_usage": True}


def test_streamed_answer(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any, dialect: str
) -> None:
    answer = "one two three four five six"
    upstream.script(FakeReply(text=answer))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "count"}])
    deltas: list[str] = []
    events: list[str] = []

    class Handler(AssistantEventHandler):
        def on_event(self, event: Any) -> None:
            events.append(event.event)

        def on_text_delta(self, delta: Any, snapshot: Any) -> None:
            deltas.append(delta.value)

    with client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=assistant.id, event_handler=Handler()
    ) as stream:
        stream.until_done()
        final = stream.get_final_run()
    assert final.status == "completed", final.last_error
    assert len(deltas) > 1 and "".join(deltas) == answer
    assert events[0] == "thread.run.created" and events[-1] == "thread.run.completed"
    assert events.index("thread.message.completed") < events.index("thread.run.completed")
    assert final.usage.prompt_tokens > 0 and final.usage.completion_tokens > 0
    assert texts(client, thread.id)[-1] == ("assistant", answer)
    sent(upstream, dialect)


def test_function_calling(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any, dialect: str
) -> None:
    upstream.script(
        FakeReply(
            text="Checking.",
            tool_calls=[
                FakeToolCall("get_weather", {"city": "Paris"}),
                FakeToolCall("get_weather", {"city": "Oslo"}),
            ],
        ),
        FakeReply(text="Paris is sunny, Oslo is cold."),
    )
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Weather?"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
    )
    assert run.status == "requires_action", run.last_error
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_weather"]
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"city": "Paris"},
        {"city": "Oslo"},
    ]
    ids = [c.id for c in calls]
    assert len(set(ids)) == 2

    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        poll_interval_ms=50,
        tool_outputs=[
            {"tool_call_id": ids[0], "output": "sunny"},
            {"tool_call_id": ids[1], "output": "cold"},
        ],
    )
    assert run.status == "completed", run.last_error
    assert texts(client, thread.id)[-1] == ("assistant", "Paris is sunny, Oslo is cold.")
    assert len(upstream.requests) == 2

    # The calls and their outputs went back to the model, in the dialect's own format.
    messages = sent(upstream, dialect).body["messages"]
    if dialect == ANTHROPIC:
        assert messages[-2]["role"] == "assistant"
        assert messages[-2]["content"][0] == {"type": "text", "text": "Checking."}
        uses = [b for b in messages[-2]["content"] if b["type"] == "tool_use"]
        assert [(u["id"], u["name"], u["input"]) for u in uses] == [
            (ids[0], "get_weather", {"city": "Paris"}),
            (ids[1], "get_weather", {"city": "Oslo"}),
        ]
        results = messages[-1]["content"]
        assert messages[-1]["role"] == "user"
        assert [(r["type"], r["tool_use_id"], r["content"]) for r in results] == [
            ("tool_result", ids[0], "sunny"),
            ("tool_result", ids[1], "cold"),
        ]
    elif dialect == OLLAMA:
        assistant_turn = messages[-3]
        assert assistant_turn["role"] == "assistant" and assistant_turn["content"] == "Checking."
        # Characterises litellm 1.80: its Ollama request transform drops the assistant's
        # tool_calls and the tool messages' tool_call_id from the history (BerriAI/litellm#26094,
        # fixed upstream by #26122). Expect the calls here once litellm is upgraded.
        assert "tool_calls" not in assistant_turn
        assert [(m["role"], m["content"]) for m in messages[-2:]] == [
            ("tool", "sunny"),
            ("tool", "cold"),
        ]
    else:
        assert [c["id"] for c in messages[-3]["tool_calls"]] == ids
        assert messages[-2:] == [
            {"role": "tool", "tool_call_id": ids[0], "content": "sunny"},
            {"role": "tool", "tool_call_id": ids[1], "content": "cold"},
        ]


@pytest.fixture(scope="module")
def manual_store(client: openai.OpenAI) -> Iterator[tuple[str, str]]:
    """(vector store id, id of the file holding the secret), shared by the dialects."""
    manual = upload(client, "manual.md", SECRET)
    other = upload(client, "recipes.txt", "Bake the bread at 220 degrees for forty minutes.")
    store = client.vector_stores.create(name="provider-docs")
    batch = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id, file_ids=[manual.id, other.id], poll_interval_ms=50
    )
    assert batch.file_counts.completed == 2, batch
    yield store.id, manual.id
    client.vector_stores.delete(store.id)


def test_file_search_with_citations(
    client: openai.OpenAI, upstream: FakeUpstream, dialect: str, manual_store: tuple[str, str]
) -> None:
    store_id, manual_id = manual_store
    assistant = client.beta.assistants.create(
        model=ALIASES[dialect],
        tools=[{"type": "file_search"}],
        tool_resources={"file_search": {"vector_store_ids": [store_id]}},
    )
    upstream.script(
        FakeReply(tool_calls=[FakeToolCall("file_search", {"queries": ["launch code"]})]),
        cite_first_result,
    )
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": "What is the launch code?"}]},
        poll_interval_ms=50,
    )
    assert run.status == "completed", run.last_error
    assert sent(upstream, dialect, 0).tool_names == ["file_search"]
    # The search output reached the model as the dialect's tool result.
    followup = sent(upstream, dialect, 1)
    tool_message = followup.messages[-1]
    assert tool_message["role"] == "tool" and "AZURE-HERON-42" in tool_message["content"]
    last = followup.body["messages"][-1]
    if dialect == ANTHROPIC:
        assert last["role"] == "user" and last["content"][0]["type"] == "tool_result"
    else:
        assert last["role"] == "tool"

    text = client.beta.threads.messages.list(run.thread_id, run_id=run.id).data[0].content[0].text
    assert text.annotations, text
    citation = text.annotations[0]
    assert citation.type == "file_citation" and citation.file_citation.file_id == manual_id
    assert text.value[citation.start_index : citation.end_index] == citation.text
    steps = client.beta.threads.runs.steps.list(
        run_id=run.id, thread_id=run.thread_id, order="asc"
    ).data
    assert steps[0].step_details.tool_calls[0].file_search.results[0].file_id == manual_id
    client.beta.assistants.delete(assistant.id)


def run_with(client: openai.OpenAI, assistant: Any) -> Any:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "?"}])
    return client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
    )


def test_overloaded_upstream_is_retried(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any, dialect: str
) -> None:
    upstream.script(FakeReply.error(OVERLOADED[dialect]), FakeReply(text="second try"))
    run = run_with(client, assistant)
    assert run.status == "completed", run.last_error
    assert len(upstream.requests) == 2 and texts(client, run.thread_id)[-1][1] == "second try"


@pytest.mark.parametrize(
    ("status", "code"),
    [(500, "server_error"), (429, "rate_limit_exceeded")],
    ids=["500", "429"],
)
def test_upstream_errors_fail_the_run(
    client: openai.OpenAI,
    upstream: FakeUpstream,
    assistant: Any,
    dialect: str,
    status: int,
    code: str,
) -> None:
    upstream.fail_next(3, status, retry_after=0.01 if status == 429 else None)
    run = run_with(client, assistant)
    assert run.status == "failed" and run.failed_at
    assert (run.last_error.code, len(upstream.requests)) == (code, 3)
    assert run.last_error.message
