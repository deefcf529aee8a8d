"""Runs through the official SDK against the fake upstream, via the real litellm path."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest
from openai import AssistantEventHandler

from tests.fake_upstream import FakeReply, FakeToolCall, FakeUpstream
from tests.helpers import WEATHER, texts
from tests.spec_check import validate_schema, validate_sse_stream


@pytest.fixture
def assistant(client: openai.OpenAI) -> Any:
    return client.beta.assistants.create(
        model="fake-model", instructions="You are terse.", tools=[WEATHER]
    )


def test_create_and_poll_completes(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
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
    assert texts(client, thread.id) == [
        ("user", "Say hello"),
        ("assistant", "Hello from the model."),
    ]
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


def stream_events(http: Any, path: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    """POST with stream=true over raw HTTP; every event is validated against the spec."""
    with http.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    return validate_sse_stream(text)


TEXT_RUN_EVENTS = [
    "thread.run.created",
    "thread.run.queued",
    "thread.run.in_progress",
    "thread.run.step.created",
    "thread.run.step.in_progress",
    "thread.message.created",
    "thread.message.in_progress",
]


def test_stream_event_order_and_deltas(http: Any, upstream: FakeUpstream, assistant: Any) -> None:
    upstream.script(FakeReply(text="one two three four five"))
    thread = http.post("/threads", json={"messages": [{"role": "user", "content": "count"}]}).json()
    events = stream_events(http, f"/threads/{thread['id']}/runs", {"assistant_id": assistant.id})
    names = [name for name, _ in events]
    deltas = [data for name, data in events if name == "thread.message.delta"]
    assert names == [
        *TEXT_RUN_EVENTS,
        *["thread.message.delta"] * len(deltas),
        "thread.message.completed",
        "thread.run.step.completed",
        "thread.run.completed",
        "done",
    ]
    assert len(deltas) > 1
    joined = "".join(d["delta"]["content"][0]["text"]["value"] for d in deltas)
    completed = dict(events)["thread.message.completed"]
    assert joined == completed["content"][0]["text"]["value"] == "one two three four five"
    stored = http.get(f"/threads/{thread['id']}/messages/{completed['id']}").json()
    assert stored["content"][0]["text"]["value"] == joined
    assert dict(events)["thread.run.completed"]["status"] == "completed"


def test_sdk_stream_helper(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    upstream.script(FakeReply(text="streamed answer"))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    seen: list[str] = []

    class Handler(AssistantEventHandler):
        def on_text_delta(self, delta: Any, snapshot: Any) -> None:
            seen.append(delta.value)

    with client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=assistant.id, event_handler=Handler()
    ) as stream:
        stream.until_done()
        final = stream.get_final_run()
        messages = stream.get_final_messages()
    assert final.status == "completed"
    assert "".join(seen) == "streamed answer"
    assert messages[0].content[0].text.value == "streamed answer"


def test_function_calling_loop(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    upstream.script(
        FakeReply(
            tool_calls=[
                FakeToolCall("get_weather", {"city": "Paris"}, id="call_dup"),
                FakeToolCall("get_weather", {"city": "Oslo"}, id="call_dup"),
            ]
        ),
        FakeReply(text="Paris is sunny, Oslo is cold."),
    )
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Weather?"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
    )
    assert run.status == "requires_action"
    assert run.expires_at and run.expires_at > run.created_at
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"city": "Paris"},
        {"city": "Oslo"},
    ]
    ids = [c.id for c in calls]
    # The upstream reused one id; clients get a unique id per call.
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
    step = client.beta.threads.runs.steps.list(run_id=run.id, thread_id=thread.id).data[0]
    assert step.type == "tool_calls" and step.status == "in_progress"
    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        poll_interval_ms=50,
        tool_outputs=[
            {"tool_call_id": ids[0], "output": "sunny"},
            {"tool_call_id": ids[1], "output": "cold"},
        ],
    )
    assert run.status == "completed" and run.required_action is None
    # The tool outputs reached the model, paired with the calls it made.
    second = upstream.requests[-1]["messages"]
    assert second[-3]["role"] == "assistant" and [c["id"] for c in second[-3]["tool_calls"]] == ids
    assert second[-2] == {"role": "tool", "tool_call_id": ids[0], "content": "sunny"}
    assert second[-1] == {"role": "tool", "tool_call_id": ids[1], "content": "cold"}
    steps = client.beta.threads.runs.steps.list(
        run_id=run.id, thread_id=thread.id, order="asc"
    ).data
    assert [s.type for s in steps] == ["tool_calls", "message_creation"]
    assert [c.function.output for c in steps[0].step_details.tool_calls] == ["sunny", "cold"]
    assert texts(client, thread.id)[-1] == ("assistant", "Paris is sunny, Oslo is cold.")


def test_text_then_tool_call_and_streamed_tool_outputs(
    http: Any, upstream: FakeUpstream, assistant: Any
) -> None:
    upstream.script(
        FakeReply(text="Let me check.", tool_calls=[FakeToolCall("get_weather", {"city": "Rome"})]),
        FakeReply(text="Rome is warm."),
    )
    thread = http.post("/threads", json={"messages": [{"role": "user", "content": "Rome?"}]}).json()
    events = stream_events(http, f"/threads/{thread['id']}/runs", {"assistant_id": assistant.id})
    names = [n for n, _ in events]
    assert names[-2:] == ["thread.run.requires_action", "done"]
    assert names.index("thread.message.completed") < names.index("thread.run.step.delta")
    run = dict(events)["thread.run.requires_action"]
    call = run["required_action"]["submit_tool_outputs"]["tool_calls"][0]
    arg_deltas = [
        d["delta"]["step_details"]["tool_calls"][0]["function"]["arguments"]
        for n, d in events
        if n == "thread.run.step.delta"
    ]
    assert len(arg_deltas) > 1 and json.loads("".join(arg_deltas)) == {"city": "Rome"}
    resumed = stream_events(
        http,
        f"/threads/{thread['id']}/runs/{run['id']}/submit_tool_outputs",
        {"tool_outputs": [{"tool_call_id": call["id"], "output": "warm"}]},
    )
    resumed_names = [n for n, _ in resumed]
    assert resumed_names[:3] == [
        "thread.run.step.completed",
        "thread.run.queued",
        "thread.run.in_progress",
    ]
    assert resumed_names[-2:] == ["thread.run.completed", "done"]
    # The model saw its own text and call as one assistant turn.
    turn = upstream.requests[-1]["messages"][-2]
    assert turn["content"] == "Let me check." and turn["tool_calls"][0]["id"] == call["id"]
    listed = http.get(f"/threads/{thread['id']}/messages", params={"order": "asc"}).json()["data"]
    assert [m["content"][0]["text"]["value"] for m in listed] == [
        "Rome?",
        "Let me check.",
        "Rome is warm.",
    ]


def test_sdk_submit_tool_outputs_stream(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    upstream.script(
        FakeReply(tool_calls=[FakeToolCall("get_weather", {"city": "Lima"})]),
        FakeReply(text="Lima: fog."),
    )
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Lima?"}])
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id) as stream:
        stream.until_done()
        run = stream.get_final_run()
    assert run.status == "requires_action"
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    with client.beta.threads.runs.submit_tool_outputs_stream(
        thread_id=thread.id,
        run_id=run.id,
        tool_outputs=[{"tool_call_id": call.id, "output": "fog"}],
    ) as stream:
        stream.until_done()
        assert stream.get_final_run().status == "completed"
        assert stream.get_final_messages()[0].content[0].text.value == "Lima: fog."


def test_no_tool_use_when_offered(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    upstream.script(FakeReply(text="No tools needed."))
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": "Hi"}]},
        poll_interval_ms=50,
    )
    assert run.status == "completed"
    assert texts(client, run.thread_id)[-1] == ("assistant", "No tools needed.")
    validate_schema("RunObject", run.model_dump(mode="json"))


def test_create_and_run_stream_starts_with_thread_created(
    http: Any, upstream: FakeUpstream, assistant: Any
) -> None:
    upstream.script(FakeReply(text="ok"))
    events = stream_events(
        http,
        "/threads/runs",
        {
            "assistant_id": assistant.id,
            "thread": {"messages": [{"role": "user", "content": "x"}], "metadata": {"a": "b"}},
            "metadata": {"run": "1"},
        },
    )
    assert [n for n, _ in events][:3] == [
        "thread.created",
        "thread.run.created",
        "thread.run.queued",
    ]
    thread = dict(events)["thread.created"]
    run = dict(events)["thread.run.completed"]
    assert run["thread_id"] == thread["id"] and thread["metadata"] == {"a": "b"}
    assert run["metadata"] == {"run": "1"}


def test_overrides_reach_the_model(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    upstream.script(FakeReply(text="fine"))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "first"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        poll_interval_ms=50,
        model="gpt-4o",  # a plain name: litellm's OpenAI provider, OPENAI_API_BASE from the env
        additional_instructions="Answer in French.",
        additional_messages=[{"role": "user", "content": "second"}],
        temperature=0.2,
        top_p=0.5,
        max_completion_tokens=300,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "r", "schema": {"type": "object"}},
        },
        metadata={"trace": "t1"},
    )
    assert run.status == "completed", run.last_error
    assert run.model == "gpt-4o" and run.instructions == "You are terse.\n\nAnswer in French."
    assert run.metadata == {"trace": "t1"} and run.temperature == 0.2
    sent = upstream.last_request
    assert sent["model"] == "gpt-4o"
    assert sent["messages"][0] == {
        "role": "system",
        "content": "You are terse.\n\nAnswer in French.",
    }
    assert [m["content"] for m in sent["messages"][1:]] == ["first", "second"]
    assert sent["temperature"] == 0.2 and sent["top_p"] == 0.5
    assert sent["max_tokens"] == 300 or sent.get("max_completion_tokens") == 300
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False
    assert sent["response_format"]["type"] == "json_schema"


def test_truncation_last_messages(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    upstream.script(FakeReply(text="ok"))
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": f"m{i}"} for i in range(5)]
    )
    client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        poll_interval_ms=50,
        truncation_strategy={"type": "last_messages", "last_messages": 2},
    )
    assert [m["content"] for m in upstream.last_request["messages"][1:]] == ["m3", "m4"]


def test_max_completion_tokens_ends_incomplete(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    upstream.script(FakeReply(text="a long answer cut short", finish_reason="length"))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "essay"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        poll_interval_ms=50,
        max_completion_tokens=256,
    )
    assert run.status == "incomplete"
    assert run.incomplete_details.reason == "max_completion_tokens"
    message = client.beta.threads.messages.list(thread.id, run_id=run.id).data[0]
    assert message.status == "incomplete" and message.incomplete_details.reason == "max_tokens"


def test_one_active_run_per_thread(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    upstream.script(FakeReply(tool_calls=[FakeToolCall("get_weather", {"city": "X"})]))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "?"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
    )
    assert run.status == "requires_action"
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert err.value.body["message"] == f"Thread {thread.id} already has an active run {run.id}."
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.messages.create(thread.id, role="user", content="more")
    assert "while a run" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.submit_tool_outputs(
            run_id=run.id,
            thread_id=thread.id,
            tool_outputs=[{"tool_call_id": "call_wrong", "output": "x"}],
        )
    assert (
        client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "requires_action"
    )
    cancelled = client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at
    step = client.beta.threads.runs.steps.list(run_id=run.id, thread_id=thread.id).data[0]
    assert step.status == "cancelled"
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert "Cannot cancel run with status 'cancelled'" in err.value.body["message"]


def wait_status(client: openai.OpenAI, thread_id: str, run_id: str, statuses: set[str]) -> Any:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        run = client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
        if run.status in statuses:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run stayed {run.status}")


def test_cancel_in_progress(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    upstream.script(FakeReply(text=" ".join(["word"] * 200), token_delay=0.05))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "long"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    wait_for_message = time.monotonic() + 10
    while not client.beta.threads.messages.list(thread.id, run_id=run.id).data:
        assert time.monotonic() < wait_for_message
        time.sleep(0.05)
    cancelling = client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert cancelling.status in ("cancelling", "cancelled")
    run = wait_status(client, thread.id, run.id, {"cancelled"})
    assert run.cancelled_at is not None
    message = client.beta.threads.messages.list(thread.id, run_id=run.id).data[0]
    assert message.status == "incomplete" and message.incomplete_details.reason == "run_cancelled"
    # The thread is free again.
    upstream.script(FakeReply(text="next"))
    again = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
    )
    assert again.status == "completed"


def test_cancel_while_the_model_is_silent(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    """A cancel interrupts the wait for the model's next chunk: it does not wait for it."""
    upstream.script(FakeReply(text="slow answer", token_delay=20.0))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "slow"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    wait_status(client, thread.id, run.id, {"in_progress"})
    time.sleep(0.2)  # the model call is out, its first chunk 20 s away
    started = time.monotonic()
    client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    run = wait_status(client, thread.id, run.id, {"cancelled"})
    # Not when the read's idle limit (this server's OPENGROVE_LLM_TIMEOUT, 2 s) ends it.
    assert time.monotonic() - started < 1.2
    # The thread is free again.
    upstream.script(FakeReply(text="next"))
    again = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
    )
    assert again.status == "completed"


def test_cancel_queued(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    upstream.script(FakeReply.hang(5))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "wait"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "queued"
    client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert wait_status(client, thread.id, run.id, {"cancelled"}).status == "cancelled"


def test_retries_then_succeeds(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    upstream.script(
        FakeReply.rate_limited(0.01), FakeReply.error(503), FakeReply(text="third time")
    )
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "?"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
    )
    assert run.status == "completed" and len(upstream.requests) == 3


@pytest.mark.parametrize(
    ("replies", "code"),
    [
        ([FakeReply.error(500)] * 3, "server_error"),
        ([FakeReply.rate_limited(0.01)] * 3, "rate_limit_exceeded"),
        ([FakeReply.hang(10)] * 3, "server_error"),
        ([FakeReply(tool_calls=[FakeToolCall("get_weather", '{"city": "Par')])], "server_error"),
    ],
    ids=["500", "429", "timeout", "broken-tool-json"],
)
def test_dead_upstream_fails_the_run(
    client: openai.OpenAI,
    upstream: FakeUpstream,
    assistant: Any,
    replies: list[FakeReply],
    code: str,
) -> None:
    upstream.script(*replies)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "?"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
    )
    assert run.status == "failed" and run.failed_at
    assert run.last_error.code == code and run.last_error.message
    # The server is still up and the thread usable.
    upstream.script(FakeReply(text="recovered"))
    again = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
    )
    assert again.status == "completed"


def test_unreachable_upstream_fails_with_reason(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    assistant = client.beta.assistants.create(model="gpt-4o")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "?"}])
    run = client.beta.threads.runs.create(
        thread_id=thread.id, assistant_id=assistant.id, model="fake-model"
    )
    # fake-model is routed to the fake upstream; a model litellm cannot route is refused.
    wait_status(client, thread.id, run.id, {"completed", "failed"})
    with pytest.raises(openai.BadRequestError) as refused:
        client.beta.threads.runs.create(
            thread_id=thread.id, assistant_id=assistant.id, model="nonexistent-provider/xyz"
        )
    assert refused.value.code == "model_not_found"


def test_run_list_retrieve_modify(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "a"}])
    ids = []
    for _ in range(3):
        upstream.script(FakeReply(text="r"))
        ids.append(
            client.beta.threads.runs.create_and_poll(
                thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
            ).id
        )
    listed = client.beta.threads.runs.list(thread.id, limit=2)
    assert [r.id for r in listed.data] == ids[::-1][:2] and listed.has_more
    modified = client.beta.threads.runs.update(ids[0], thread_id=thread.id, metadata={"x": "y"})
    assert modified.metadata == {"x": "y"}
    with pytest.raises(openai.NotFoundError) as err:
        client.beta.threads.runs.retrieve("run_nope", thread_id=thread.id)
    assert err.value.body["message"] == "No run found with id 'run_nope'."
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id="asst_nope")


def test_bad_run_requests(http: Any, assistant: Any) -> None:
    thread = http.post("/threads", json={}).json()
    for body, param in [
        ({}, "assistant_id"),
        ({"assistant_id": assistant.id, "max_completion_tokens": 10}, "max_completion_tokens"),
        ({"assistant_id": assistant.id, "tool_choice": "sometimes"}, "tool_choice"),
        (
            {
                "assistant_id": assistant.id,
                "truncation_strategy": {"type": "last_messages", "last_messages": 0},
            },
            "truncation_strategy.last_messages",
        ),
        ({"assistant_id": assistant.id, "temperature": 7}, "temperature"),
        ({"assistant_id": assistant.id, "unknown": 1}, "unknown"),
    ]:
        response = http.post(f"/threads/{thread['id']}/runs", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
    assert http.get(f"/threads/{thread['id']}/runs").json()["data"] == []


def test_deleting_thread_deletes_runs(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    upstream.script(FakeReply(text="bye"))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "x"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
    )
    client.beta.threads.delete(thread.id)
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)


def test_long_answer_outlives_the_idle_timeout(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    # 30 chunks 0.1 s apart: longer than the server's 2 s LLM timeout, never idle that long.
    upstream.script(FakeReply(text=" ".join(["tok"] * 30), token_delay=0.1))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "long"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=100
    )
    assert run.status == "completed", run.last_error
    assert texts(client, thread.id)[-1][1] == " ".join(["tok"] * 30)


def test_max_prompt_tokens_drops_oldest_messages(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    upstream.script(FakeReply(text="ok"))
    filler = " ".join(["lorem"] * 120)
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": f"old {i} {filler}"} for i in range(6)]
        + [{"role": "user", "content": "newest question"}]
    )
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50, max_prompt_tokens=300
    )
    assert run.status == "completed", run.last_error
    sent = [m["content"] for m in upstream.last_request["messages"][1:]]
    assert sent[-1] == "newest question" and len(sent) < 7
    assert not any(content.startswith("old 0 ") for content in sent)


def test_parallel_tool_calls_false_keeps_one_call(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    upstream.script(
        FakeReply(
            tool_calls=[
                FakeToolCall("get_weather", {"city": "A"}),
                FakeToolCall("get_weather", {"city": "B"}),
            ]
        )
    )
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "A and B?"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        poll_interval_ms=50,
        parallel_tool_calls=False,
    )
    assert run.status == "requires_action" and run.parallel_tool_calls is False
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "A"}]
    assert upstream.last_request["parallel_tool_calls"] is False
    client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
