"""The LLM fast path (app/llm/openai_wire.py) against litellm's own path for the same routes.

In-process: which routes take it, and that for the same request both paths send the same
body, yield the same events and fail with the same `LLMError` (code and message), retrying
alike. Server-level: the suite's server streams OpenAI-format models through the fast path,
and a second server with OPENGROVE_LLM_FAST_PATH=false runs the OpenAI-dialect provider
tests through litellm, so that path stays covered.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest

import tests.test_providers as providers
from app.llm import adapter
from app.llm.routing import ModelRoute
from tests.conftest import own_server_client
from tests.fake_upstream import OPENAI, FakeReply, FakeToolCall, FakeUpstream
from tests.helpers import WEATHER


@pytest.fixture(autouse=True)
async def close_shared_clients() -> AsyncIterator[None]:
    """Each test has its own event loop: close the fast path's clients made on it."""
    yield
    await adapter.aclose()


STRICT_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Weather?"},
            {"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "low"}},
        ],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": "{}"},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]
FULL: dict[str, Any] = {
    "tools": [STRICT_TOOL],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "response_format": {"type": "json_object"},
    "temperature": 0.4,
    "top_p": 0.9,
    "max_tokens": 64,
}
# litellm's in-process stream wrapper warns while building its response objects.
pytestmark = pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


def route(upstream: FakeUpstream, model: str = "openai/fake-model") -> ModelRoute:
    return ModelRoute(name=model, litellm_model=model, api_base=upstream.base_url, api_key="k")


async def collect(events: AsyncIterator[adapter.StreamEvent]) -> list[Any]:
    """Events without the fake's random call ids."""
    out: list[Any] = []
    async for event in events:
        if isinstance(event, adapter.ToolCallDelta):
            out.append(("call", event.index, event.id is not None, event.name, event.arguments))
        else:
            out.append(event)
    return out


async def call_both(
    upstream: FakeUpstream, model: str, reply: FakeReply, **kw: Any
) -> list[tuple[Any, list[Any], dict[str, str]]]:
    """(body sent, events, headers) through litellm, then through the fast path."""
    results = []
    for fast in (False, True):
        upstream.reset()
        upstream.script(reply)
        request = adapter.ChatRequest(
            route=route(upstream, model), messages=copy.deepcopy(HISTORY), **copy.deepcopy(kw)
        )
        events = await collect(adapter.stream_chat(request, adapter.RetryPolicy(fast_path=fast)))
        record = upstream.recorded[-1]
        assert record.path == "/v1/chat/completions"
        results.append((record.body, events, record.headers))
    return results


async def test_routes_taking_the_fast_path(upstream: FakeUpstream) -> None:
    fast = ["openai/fake-model", "hosted_vllm/my-model", "gpt-4o", "openai/gpt-5"]
    # Anthropic/Ollama/Azure speak other wire formats; o-series models get litellm's message
    # rewrites (system → user for some), so they stay on litellm too.
    slow = ["anthropic/claude-fake", "ollama_chat/llama-fake", "azure/my-deployment", "o3-mini"]
    for model in fast:
        assert await adapter.takes_fast_path(route(upstream, model)), model
    for model in slow:
        assert not await adapter.takes_fast_path(route(upstream, model)), model
    litellm_only = adapter.RetryPolicy(fast_path=False)
    for model in fast:
        assert not await adapter.takes_fast_path(route(upstream, model), litellm_only), model


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("openai/fake-model", FULL),
        ("openai/fake-model", {}),
        ("hosted_vllm/fake-model", FULL),  # `strict` / additionalProperties stripped
        ("openai/gpt-5", FULL),  # max_completion_tokens, no temperature/top_p
        ("gpt-4", {**FULL, "response_format": SCHEMA_FORMAT}),  # gpt-4: no response_format
    ],
    ids=["openai-full", "openai-bare", "vllm", "gpt-5", "gpt-4"],
)
async def test_same_request_and_events_as_litellm(
    upstream: FakeUpstream,
    model: str,
    params: dict[str, Any],
) -> None:
    reply = FakeReply(
        text="Checking.",
        tool_calls=[FakeToolCall("get_weather", {"city": "Paris"}), FakeToolCall("x", {})],
        usage={"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
    )
    (
        (slow_body, slow_events, slow_headers),
        (fast_body, fast_events, fast_headers),
    ) = await call_both(upstream, model, reply, **params)
    assert fast_body == slow_body
    assert fast_events == slow_events
    assert fast_events[-1] == adapter.Finish("tool_calls", adapter.Usage(11, 5))
    assert fast_headers["authorization"] == slow_headers["authorization"]
    # The body really went out through the fast path (litellm sends with the openai SDK).
    assert slow_headers["user-agent"].startswith("AsyncOpenAI/")
    assert not fast_headers["user-agent"].startswith("AsyncOpenAI/")
    if model == "hosted_vllm/fake-model":
        assert "strict" not in fast_body["tools"][0]["function"]
    if model == "openai/gpt-5":
        assert fast_body["max_completion_tokens"] == 64 and "temperature" not in fast_body


async def test_text_finish_reasons_match(upstream: FakeUpstream) -> None:
    for reply in (FakeReply(text="one two three"), FakeReply(text="cut", finish_reason="length")):
        (_, slow_events, _), (_, fast_events, _) = await call_both(
            upstream, "openai/fake-model", reply
        )
        assert fast_events == slow_events
        assert "".join(e.text for e in fast_events[:-1]) == reply.text


async def failure(fast: bool, model_route: ModelRoute, attempts: int = 1) -> adapter.LLMError:
    request = adapter.ChatRequest(route=model_route, messages=[{"role": "user", "content": "?"}])
    policy = adapter.RetryPolicy(attempts=attempts, base_delay=0.01, timeout=0.5, fast_path=fast)
    with pytest.raises(adapter.LLMError) as failed:
        await collect(adapter.stream_chat(request, policy))
    return failed.value


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (FakeReply.rate_limited(0.01), "rate_limit_exceeded"),
        (FakeReply.error(500), "server_error"),
        (FakeReply.error(503), "server_error"),
        (FakeReply.error(400), "server_error"),
        (FakeReply.error(404), "server_error"),
        (
            FakeReply.error(400, "This model's maximum context length is 8192 tokens."),
            "invalid_prompt",
        ),
        (FakeReply.hang(5), "server_error"),
    ],
    ids=["429", "500", "503", "400", "404", "context-window", "idle-timeout"],
)
async def test_same_errors_as_litellm(
    upstream: FakeUpstream,
    reply: FakeReply,
    code: str,
) -> None:
    errors = []
    for fast in (False, True):
        upstream.reset()
        upstream.script(reply)
        errors.append(await failure(fast, route(upstream)))
    assert (errors[1].code, errors[1].message) == (errors[0].code, errors[0].message)
    assert errors[1].code == code


async def test_unreachable_provider_same_error() -> None:
    dead = ModelRoute("dead", "openai/fake-model", api_base="http://127.0.0.1:9/v1", api_key="k")
    slow, fast = [await failure(fast, dead) for fast in (False, True)]
    assert (fast.code, fast.message) == (slow.code, slow.message)
    assert fast.message == "Could not reach the model provider."


async def test_retries_before_the_first_token_only(upstream: FakeUpstream) -> None:
    policy = adapter.RetryPolicy(attempts=3, base_delay=0.01, timeout=1)
    request = adapter.ChatRequest(
        route=route(upstream), messages=[{"role": "user", "content": "?"}]
    )
    upstream.script(
        FakeReply.rate_limited(0.01), FakeReply.drop(after_chunks=0), FakeReply(text="third")
    )
    events = await collect(adapter.stream_chat(request, policy))
    assert events[0] == adapter.TextDelta("third") and len(upstream.requests) == 3
    # A stream cut after text reached the caller is not replayed.
    upstream.reset()
    upstream.script(FakeReply.drop(after_chunks=3, text="one two three four five"))
    with pytest.raises(adapter.LLMError) as failed:
        await collect(adapter.stream_chat(request, policy))
    assert failed.value.code == "server_error" and len(upstream.requests) == 1


# --- server level -------------------------------------------------------------------------


def test_server_streams_openai_models_through_the_fast_path(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    assistant = client.beta.assistants.create(
        model="fake-model", instructions="You are terse.", tools=[WEATHER], temperature=0.3
    )
    upstream.script(FakeReply(text="Done."))
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": "hi"}]},
        max_completion_tokens=500,
        parallel_tool_calls=False,
        poll_interval_ms=50,
    )
    assert run.status == "completed", run.last_error
    record = upstream.recorded[-1]
    assert not record.headers["user-agent"].startswith("AsyncOpenAI/")  # not via litellm
    assert record.headers["authorization"] == "Bearer fake-key"
    body = record.body
    assert body["model"] == "fake-model" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"][:2] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
    ]
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather"]
    assert body["parallel_tool_calls"] is False and body["temperature"] == 0.3
    assert 0 < body["max_tokens"] <= 500
    client.beta.assistants.delete(assistant.id)


@pytest.fixture(scope="module")
def litellm_client(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream
) -> Iterator[openai.OpenAI]:
    """A server with the fast path off (its own database, so no other worker runs its runs)."""
    with own_server_client(
        tmp_path_factory.mktemp("litellm-path"), fake_upstream, OPENGROVE_LLM_FAST_PATH="false"
    ) as sdk:
        yield sdk


@pytest.fixture
def litellm_assistant(litellm_client: openai.OpenAI) -> Iterator[Any]:
    assistant = litellm_client.beta.assistants.create(
        model="fake-model", instructions="You are terse.", tools=[WEATHER]
    )
    yield assistant
    litellm_client.beta.assistants.delete(assistant.id)


def test_litellm_path_still_serves_openai_models(
    litellm_client: openai.OpenAI, upstream: FakeUpstream, litellm_assistant: Any
) -> None:
    """The OpenAI-dialect provider tests, with OPENGROVE_LLM_FAST_PATH=false."""
    args = (litellm_client, upstream, litellm_assistant, OPENAI)
    providers.test_plain_answer(*args)
    assert upstream.recorded[-1].headers["user-agent"].startswith("AsyncOpenAI/")
    for check in (
        providers.test_streamed_answer,
        providers.test_function_calling,
        providers.test_overloaded_upstream_is_retried,
    ):
        upstream.reset()
        check(*args)
    for status, code in ((500, "server_error"), (429, "rate_limit_exceeded")):
        upstream.reset()
        providers.test_upstream_errors_fail_the_run(*args, status, code)
    assert upstream.recorded[-1].headers["user-agent"].startswith("AsyncOpenAI/")
