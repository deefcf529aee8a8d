"""The fake upstream, exercised through the real litellm client code path (no mocks).

Some tests also pin down litellm behaviour our LLM adapter relies on or must work around
(connection reuse, how a mid-stream connection drop surfaces).
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import litellm
import pytest

from app.llm import adapter
from tests.fake_upstream import (
    FakeReply,
    FakeToolCall,
    FakeUpstream,
    RecordedRequest,
    echo_reply,
    fake_embedding,
    last_tool_output,
)

MODEL = "openai/fake-model"
HI = [{"role": "user", "content": "hi"}]

# litellm's own stream-logging path emits these on every streamed call (BerriAI/litellm#11759).
pytestmark = pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")


@pytest.fixture(autouse=True, scope="module")
async def close_litellm_clients() -> AsyncIterator[None]:
    """These tests call litellm on the tests' event loop: close the clients it cached there
    (else their aiohttp sessions are reported unclosed when pytest exits)."""
    yield
    await adapter.aclose()


@pytest.fixture(scope="module")
def server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def upstream(server: FakeUpstream) -> FakeUpstream:
    server.reset()
    server.token_delay = 0.0
    return server


async def stream_chunks(upstream: FakeUpstream, **kwargs: Any) -> list[Any]:
    kwargs.setdefault("messages", HI)
    response = await litellm.acompletion(
        model=MODEL,
        api_base=upstream.base_url,
        api_key="fake",
        stream=True,
        num_retries=0,
        **kwargs,
    )
    return [chunk async for chunk in response]


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def finish_reasons(chunks: list[Any]) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_default_reply_echoes_last_user_message(upstream: FakeUpstream) -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second question"}]},
    ]
    chunks = await stream_chunks(upstream, messages=messages)
    assert text_of(chunks) == "Echo: second question"
    assert finish_reasons(chunks) == ["stop"]


async def test_text_streams_in_several_chunks_and_reassembles(upstream: FakeUpstream) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    upstream.script(FakeReply(text=text))
    chunks = await stream_chunks(upstream)
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 5
    assert text_of(chunks) == text
    assert finish_reasons(chunks) == ["stop"]
    assert all(c.id == chunks[0].id and c.id.startswith("chatcmpl-") for c in chunks)


async def test_tool_call_deltas_reassemble(upstream: FakeUpstream) -> None:
    weather_args = {"city": "Paris", "unit": "celsius", "days": [1, 2, 3]}
    search_args = {"query": "opengrove assistants api", "limit": 5}
    upstream.script(
        FakeReply(
            text="Let me check.",
            tool_calls=[
                FakeToolCall("get_weather", weather_args, id="call_weather1"),
                FakeToolCall("search", search_args),
            ],
        )
    )
    chunks = await stream_chunks(upstream, tools=[_tool("get_weather"), _tool("search")])

    calls: dict[int, dict[str, Any]] = {}
    fragments: dict[int, int] = {}
    for chunk in chunks:
        if not chunk.choices:
            continue
        for tc in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            if tc.id:
                assert call["id"] is None, "id must only be in the first delta of a call"
                call["id"] = tc.id
            if tc.function.name:
                assert not call["arguments"], "the name must come before argument fragments"
                call["name"] += tc.function.name
            if tc.function.arguments:
                call["arguments"] += tc.function.arguments
                fragments[tc.index] = fragments.get(tc.index, 0) + 1

    assert text_of(chunks) == "Let me check."
    assert sorted(calls) == [0, 1]
    assert calls[0]["id"] == "call_weather1"
    assert calls[1]["id"].startswith("call_")
    assert [calls[i]["name"] for i in (0, 1)] == ["get_weather", "search"]
    assert json.loads(calls[0]["arguments"]) == weather_args
    assert json.loads(calls[1]["arguments"]) == search_args
    assert fragments[0] > 1 and fragments[1] > 1, "arguments must arrive as partial JSON"
    assert finish_reasons(chunks) == ["tool_calls"]


async def test_scripted_finish_reason_length(upstream: FakeUpstream) -> None:
    upstream.script(FakeReply(text="cut short", finish_reason="length"))
    assert finish_reasons(await stream_chunks(upstream)) == ["length"]


async def test_usage_in_final_chunk_when_requested(upstream: FakeUpstream) -> None:
    usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    upstream.script(FakeReply(text="counted words here", usage=usage))
    chunks = await stream_chunks(upstream, stream_options={"include_usage": True})
    assert upstream.last_request["stream_options"] == {"include_usage": True}
    reported = [c.usage for c in chunks if getattr(c, "usage", None)]
    assert len(reported) == 1
    got = reported[0]
    assert (got.prompt_tokens, got.completion_tokens, got.total_tokens) == (11, 7, 18)


async def test_raw_sse_is_valid_openai_chunks(upstream: FakeUpstream) -> None:
    upstream.script(FakeReply(text="a b", tool_calls=[FakeToolCall("f", {"x": 1})]))
    body = {"model": "m", "stream": True, "messages": HI, "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{upstream.base_url}/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert {"id", "created", "model", "choices"} <= chunk.keys()
        for choice in chunk["choices"]:
            assert {"index", "delta", "finish_reason"} <= choice.keys()
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    first_call = chunks[3]["choices"][0]["delta"]["tool_calls"][0]
    assert first_call["type"] == "function" and first_call["function"]["name"] == "f"
    later = chunks[4]["choices"][0]["delta"]["tool_calls"][0]
    assert "id" not in later and "name" not in later["function"]


async def test_non_stream_completion_with_tool_calls_and_usage(upstream: FakeUpstream) -> None:
    upstream.script(FakeReply(tool_calls=[FakeToolCall("lookup", {"id": 7}, id="call_1")]))
    response = await litellm.acompletion(
        model=MODEL, api_base=upstream.base_url, api_key="fake", messages=HI, num_retries=0
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].id == "call_1"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"id": 7}
    assert response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens
    )


async def test_scripted_500_then_success(upstream: FakeUpstream) -> None:
    upstream.script(FakeReply.error(500), FakeReply(text="recovered"))
    with pytest.raises(litellm.InternalServerError) as excinfo:
        await stream_chunks(upstream)
    assert excinfo.value.status_code == 500
    # num_retries=0 must also stop the openai SDK's own retries: one request, one error.
    assert len(upstream.requests) == 1
    assert text_of(await stream_chunks(upstream)) == "recovered"


async def test_fail_next_n_then_success(upstream: FakeUpstream) -> None:
    upstream.fail_next(2, status=503)
    upstream.script(FakeReply(text="third time lucky"))
    for _ in range(2):
        with pytest.raises(litellm.ServiceUnavailableError):
            await stream_chunks(upstream)
    assert text_of(await stream_chunks(upstream)) == "third time lucky"
    assert upstream.pending == 0


async def test_rate_limit_has_retry_after_and_openai_error_body(upstream: FakeUpstream) -> None:
    upstream.script(FakeReply.rate_limited(retry_after=2))
    with pytest.raises(litellm.RateLimitError) as excinfo:
        await stream_chunks(upstream)
    assert excinfo.value.litellm_response_headers["retry-after"] == "2"

    upstream.script(FakeReply.rate_limited(retry_after=1.5))
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{upstream.base_url}/chat/completions", json={"model": "m", "messages": HI}
        )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1.5"
    error = response.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["message"]


async def test_hang_times_out_client_then_server_recovers(upstream: FakeUpstream) -> None:
    upstream.script(FakeReply.hang(30))
    started = time.monotonic()
    with pytest.raises(litellm.Timeout):
        await stream_chunks(upstream, timeout=0.5)
    assert time.monotonic() - started < 5
    assert text_of(await stream_chunks(upstream)) == "Echo: hi"


def test_stop_does_not_wait_for_a_hanging_request() -> None:
    upstream = FakeUpstream().start()
    upstream.script(FakeReply.hang(60))
    statuses: list[int] = []

    def call() -> None:
        body = {"model": "m", "messages": HI}
        statuses.append(httpx.post(f"{upstream.base_url}/chat/completions", json=body).status_code)

    caller = threading.Thread(target=call)
    caller.start()
    upstream.wait_for_requests(1)
    started = time.monotonic()
    upstream.stop()
    assert time.monotonic() - started < 1.5
    caller.join(timeout=5)
    assert statuses == [503]


async def test_connection_drop_mid_stream_is_visible_over_http(upstream: FakeUpstream) -> None:
    upstream.script(FakeReply.drop(after_chunks=3, text="one two three four five"))
    received: list[str] = []
    async with httpx.AsyncClient() as client:
        body = {"model": "m", "stream": True, "messages": HI}
        async with client.stream("POST", f"{upstream.base_url}/chat/completions", json=body) as r:
            with pytest.raises(httpx.RemoteProtocolError):
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        received.append(line)
    assert len(received) == 3 and "[DONE]" not in received[-1]


async def test_litellm_default_transport_hides_mid_stream_drop(upstream: FakeUpstream) -> None:
    """Characterises litellm 1.80: its default aiohttp transport swallows an incomplete chunked
    body, and the stream wrapper then synthesises finish_reason "stop". The adapter cannot rely
    on an exception to notice a dropped upstream stream (httpx transport does raise)."""
    upstream.script(FakeReply.drop(after_chunks=3, text="one two three four five"))
    chunks = await stream_chunks(upstream)
    assert text_of(chunks) == "one two"
    assert finish_reasons(chunks) == ["stop"]


async def test_request_log_records_what_reached_the_model(upstream: FakeUpstream) -> None:
    messages = [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp_c": 21}'},
    ]
    await stream_chunks(upstream, messages=messages, tools=[_tool("get_weather")])
    (body,) = upstream.requests
    assert body["model"] == "fake-model"
    assert body["stream"] is True
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool"]
    assert body["messages"][0]["content"] == "You are a weather bot."
    assert body["messages"][3] == messages[3]
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert upstream.wait_for_requests(1) == [body]


async def test_embeddings_through_litellm(upstream: FakeUpstream) -> None:
    texts = ["the cat sat on the mat", "the cat sat on a mat", "quantum chromodynamics lattice"]
    response = await litellm.aembedding(
        model="openai/fake-embed", input=texts, api_base=upstream.base_url, api_key="fake"
    )
    vectors = [item["embedding"] for item in response.data]
    assert [len(v) for v in vectors] == [64, 64, 64]
    for vector, text in zip(vectors, texts, strict=True):
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-5)
        expected = fake_embedding(text)
        assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(vector, expected, strict=True))
    assert cosine(vectors[0], vectors[1]) > 0.7
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert upstream.embedding_requests[0]["input"] == texts
    assert upstream.requests == [], "embeddings are logged separately from chat requests"


async def test_embeddings_float_format_and_dimensions(upstream: FakeUpstream) -> None:
    body = {"model": "e", "input": "hello", "encoding_format": "float", "dimensions": 16}
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{upstream.base_url}/embeddings", json=body)
    data = response.json()["data"]
    assert data[0]["embedding"] == fake_embedding("hello", 16)


async def test_models_endpoint(upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{upstream.base_url}/models")
    assert {m["id"] for m in response.json()["data"]} == {"fake-model", "fake-embed"}


async def test_token_delay_spaces_out_chunks(upstream: FakeUpstream) -> None:
    upstream.token_delay = 0.05
    upstream.script(FakeReply(text="one two three four"))
    started = time.monotonic()
    chunks = await stream_chunks(upstream)
    # role chunk, 4 words, finish chunk: 5 gaps of 50 ms.
    assert time.monotonic() - started >= 0.24
    assert text_of(chunks) == "one two three four"


async def test_scripting_from_other_threads_is_safe(upstream: FakeUpstream) -> None:
    expected = {f"reply {t}-{i}" for t in range(4) for i in range(10)}

    def push(t: int) -> None:
        for i in range(10):
            upstream.script(FakeReply(text=f"reply {t}-{i}"))

    threads = [threading.Thread(target=push, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    results = await asyncio.gather(*(stream_chunks(upstream) for _ in range(40)))
    assert {text_of(chunks) for chunks in results} == expected
    assert len(upstream.requests) == 40 and upstream.pending == 0


async def test_litellm_reuses_upstream_connections() -> None:
    """Characterises litellm 1.80 defaults: its cached client (aiohttp transport) keeps one
    keep-alive connection for sequential streamed calls. (With
    `litellm.disable_aiohttp_transport = True`, every streamed call opens a new connection:
    the openai SDK closes the response at [DONE] before the chunked terminator is read.)"""
    with FakeUpstream() as fresh:
        for _ in range(20):
            assert text_of(await stream_chunks(fresh)) == "Echo: hi"
        assert fresh.connections_accepted == 1


def test_control_endpoints_script_a_standalone_process() -> None:
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_upstream", "--port", "0", "--token-delay-ms", "1"],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("fake upstream listening on http://127.0.0.1:")
        base_url = line.split()[-1]
        root = base_url.removesuffix("/v1")
        with httpx.Client() as client:
            reply = FakeReply(tool_calls=[FakeToolCall("f", {"a": 1}, id="call_x")])
            assert client.post(f"{root}/__fake__/script", json=reply.to_dict()).status_code == 200
            body = {"model": "m", "messages": HI}
            completion = client.post(f"{base_url}/chat/completions", json=body).json()
            assert completion["choices"][0]["message"]["tool_calls"][0]["id"] == "call_x"
            stats = client.get(f"{root}/__fake__/stats").json()
            assert stats["requests"] == 1 and stats["pending"] == 0
            logged = client.get(f"{root}/__fake__/requests").json()["requests"]
            assert logged == [body]
            # The same script drives the other dialects.
            assert client.post(f"{root}/__fake__/script", json={"text": "hej"}).status_code == 200
            message = client.post(f"{root}/v1/messages", json={"messages": HI}).json()
            assert message["content"] == [{"type": "text", "text": "hej"}]
            log = client.get(f"{root}/__fake__/requests").json()["log"]
            assert [(r["dialect"], r["path"]) for r in log] == [
                ("openai", "/v1/chat/completions"),
                ("anthropic", "/v1/messages"),
            ]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def _tool(name: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "parameters": {"type": "object", "properties": {}}},
    }


# ----------------------------------------------------------------- Anthropic Messages dialect

CLAUDE = "anthropic/claude-fake"
OLLAMA_MODEL = "ollama_chat/llama-fake"


async def provider_chunks(upstream: FakeUpstream, model: str, **kwargs: Any) -> list[Any]:
    kwargs.setdefault("messages", HI)
    response = await litellm.acompletion(
        model=model,
        api_base=upstream.root_url,
        api_key="fake",
        stream=True,
        stream_options={"include_usage": True},
        num_retries=0,
        **kwargs,
    )
    return [chunk async for chunk in response]


def tool_calls_of(chunks: list[Any]) -> dict[int, dict[str, Any]]:
    """Tool-call deltas reassembled per index, as the adapter does."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = call["id"] or tc.id
            call["name"] += tc.function.name or ""
            call["arguments"] += tc.function.arguments or ""
    return calls


def usage_of(chunks: list[Any]) -> tuple[int, int]:
    (usage,) = [c.usage for c in chunks if getattr(c, "usage", None)]
    return usage.prompt_tokens, usage.completion_tokens


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n")
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


async def test_anthropic_stream_through_litellm(upstream: FakeUpstream) -> None:
    upstream.script(
        FakeReply(
            text="Let me check.",
            tool_calls=[
                FakeToolCall("get_weather", {"city": "Paris"}, id="toolu_1"),
                FakeToolCall("search", {"query": "opengrove", "limit": 5}),
            ],
            usage={"prompt_tokens": 12, "completion_tokens": 9},
        )
    )
    messages = [{"role": "system", "content": "Be terse."}, *HI]
    chunks = await provider_chunks(
        upstream, CLAUDE, messages=messages, tools=[_tool("get_weather"), _tool("search")]
    )
    assert text_of(chunks) == "Let me check."
    calls = tool_calls_of(chunks)
    assert [calls[i]["name"] for i in (0, 1)] == ["get_weather", "search"]
    assert calls[0]["id"] == "toolu_1" and calls[1]["id"].startswith("toolu_")
    assert json.loads(calls[1]["arguments"]) == {"query": "opengrove", "limit": 5}
    assert finish_reasons(chunks) == ["tool_calls"]  # Anthropic's stop_reason "tool_use"
    assert usage_of(chunks) == (12, 9)

    record = upstream.last_recorded
    assert (record.dialect, record.path, record.stream) == ("anthropic", "/v1/messages", True)
    assert record.headers["x-api-key"] == "fake" and record.headers["anthropic-version"]
    assert record.body["system"] == [{"type": "text", "text": "Be terse."}]
    assert record.tool_names == ["get_weather", "search"]
    assert record.messages == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "hi"},
    ]
    assert upstream.last_request is record.body


async def test_anthropic_raw_sse_events(upstream: FakeUpstream) -> None:
    upstream.script(FakeReply(text="a b", tool_calls=[FakeToolCall("f", {"x": 1})]))
    body = {"model": "claude-fake", "max_tokens": 64, "stream": True, "messages": HI}
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{upstream.root_url}/v1/messages", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"].startswith("req_")
    events = sse_events(response.text)
    assert all(name == data["type"] for name, data in events)
    assert [name for name, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        *["content_block_delta"] * 2,
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["role"] == "assistant"
    assert start["content"] == [] and start["usage"]["input_tokens"] > 0
    assert events[2][1]["content_block"] == {"type": "text", "text": ""}
    assert events[3][1]["delta"] == {"type": "text_delta", "text": "a"}
    tool_block = events[6][1]
    assert tool_block["index"] == 1 and tool_block["content_block"]["type"] == "tool_use"
    assert tool_block["content_block"]["name"] == "f"
    assert events[7][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"x": 1}'}
    message_delta = events[-2][1]
    assert message_delta["delta"]["stop_reason"] == "tool_use"
    assert message_delta["usage"]["output_tokens"] > 0


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        (None, "tool_use"),
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("stop_sequence", "stop_sequence"),  # not an OpenAI name: passed through
    ],
)
async def test_anthropic_non_stream_message(
    upstream: FakeUpstream, finish: str | None, stop_reason: str
) -> None:
    upstream.script(
        FakeReply(text="done", tool_calls=[FakeToolCall("f", {"x": 1})], finish_reason=finish)
    )
    body = {"model": "claude-fake", "max_tokens": 64, "messages": HI}
    async with httpx.AsyncClient() as client:
        # litellm sends /v1/messages; a bare /messages and a doubled /v1/v1/messages also work.
        response = await client.post(f"{upstream.base_url}/v1/messages", json=body)
    message = response.json()
    assert message["type"] == "message" and message["stop_reason"] == stop_reason
    assert message["content"][0] == {"type": "text", "text": "done"}
    assert message["content"][1]["type"] == "tool_use"
    assert message["content"][1]["input"] == {"x": 1}
    assert message["usage"]["input_tokens"] > 0 and message["usage"]["output_tokens"] > 0
    assert upstream.last_recorded.path == "/v1/v1/messages"


async def test_anthropic_non_stream_through_litellm(upstream: FakeUpstream) -> None:
    upstream.script(FakeReply(tool_calls=[FakeToolCall("lookup", {"id": 7}, id="toolu_7")]))
    response = await litellm.acompletion(
        model=CLAUDE, api_base=upstream.root_url, api_key="fake", messages=HI, num_retries=0
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].id == "toolu_7"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"id": 7}
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0


@pytest.mark.parametrize(
    ("status", "error_type", "exception"),
    [
        (400, "invalid_request_error", litellm.BadRequestError),
        (401, "authentication_error", litellm.AuthenticationError),
        (429, "rate_limit_error", litellm.RateLimitError),
        (500, "api_error", litellm.InternalServerError),
        (529, "overloaded_error", litellm.InternalServerError),
    ],
)
async def test_anthropic_errors(
    upstream: FakeUpstream, status: int, error_type: str, exception: type[Exception]
) -> None:
    upstream.script(FakeReply.error(status, retry_after=3))
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{upstream.root_url}/messages", json={"messages": HI})
    assert response.status_code == status and response.headers["retry-after"] == "3"
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type
    assert body["error"]["message"]

    upstream.script(FakeReply.error(status))
    with pytest.raises(exception) as excinfo:
        await provider_chunks(upstream, CLAUDE)
    assert error_type in str(excinfo.value)


# ----------------------------------------------------------------- Ollama native chat dialect


async def test_ollama_stream_through_litellm(upstream: FakeUpstream) -> None:
    litellm.register_model(
        {"ollama/llama-fake": {"litellm_provider": "ollama", "supports_function_calling": True}}
    )
    upstream.script(
        FakeReply(
            text="Let me check.",
            tool_calls=[
                FakeToolCall("get_weather", {"city": "Paris"}),
                FakeToolCall("get_weather", {"city": "Oslo"}),
            ],
            usage={"prompt_tokens": 21, "completion_tokens": 4},
        )
    )
    chunks = await provider_chunks(upstream, OLLAMA_MODEL, tools=[_tool("get_weather")])
    assert text_of(chunks) == "Let me check."
    calls = tool_calls_of(chunks)
    assert [json.loads(calls[i]["arguments"]) for i in (0, 1)] == [
        {"city": "Paris"},
        {"city": "Oslo"},
    ]
    assert calls[0]["id"] and calls[0]["id"] != calls[1]["id"]  # litellm makes up uuids
    assert finish_reasons(chunks) == ["stop"]  # Ollama has no "tool_calls" done_reason
    assert usage_of(chunks) == (21, 4)
    record = upstream.last_recorded
    assert (record.dialect, record.path) == ("ollama", "/api/chat")
    assert record.headers["authorization"] == "Bearer fake"
    assert record.tool_names == ["get_weather"] and "format" not in record.body


async def test_ollama_raw_ndjson_lines(upstream: FakeUpstream) -> None:
    upstream.script(FakeReply(text="a b", tool_calls=[FakeToolCall("f", {"x": 1})]))
    body = {"model": "llama-fake", "stream": True, "messages": HI, "options": {}}
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{upstream.root_url}/api/chat", json=body)
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["message"]["content"] for line in lines] == ["a", " b", "", ""]
    assert [line["done"] for line in lines] == [False, False, False, True]
    assert all(line["model"] == "llama-fake" and line["created_at"] for line in lines)
    assert lines[2]["message"]["tool_calls"] == [{"function": {"name": "f", "arguments": {"x": 1}}}]
    final = lines[-1]
    assert final["done_reason"] == "stop"
    assert final["prompt_eval_count"] > 0 and final["eval_count"] > 0


async def test_ollama_non_stream_and_model_endpoints(upstream: FakeUpstream) -> None:
    upstream.script(FakeReply(text="cut", finish_reason="length"))
    async with httpx.AsyncClient(base_url=upstream.root_url) as client:
        reply = (await client.post("/api/chat", json={"model": "m", "messages": HI})).json()
        tags = (await client.get("/api/tags")).json()
        show = (await client.post("/api/show", json={"name": "llama-fake"})).json()
        missing = await client.get("/api/nope")
    assert reply["done"] is True and reply["done_reason"] == "length"
    assert reply["message"] == {"role": "assistant", "content": "cut"}
    assert {t["name"] for t in tags["models"]} == {"fake-model", "fake-embed"}
    assert "tools" in show["template"].lower() and "tools" in show["capabilities"]
    assert missing.status_code == 404 and "error" in missing.json()


async def test_ollama_errors(upstream: FakeUpstream) -> None:
    upstream.script(FakeReply.error(500, "model crashed"))
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{upstream.root_url}/api/chat", json={"messages": HI})
    assert response.status_code == 500 and response.json() == {"error": "model crashed"}

    # litellm 1.80 reports any Ollama HTTP error as APIConnectionError (status 500); the
    # provider's status survives only in the chained exception.
    upstream.script(FakeReply.error(429))
    with pytest.raises(litellm.APIConnectionError) as excinfo:
        await provider_chunks(upstream, OLLAMA_MODEL)
    chained = excinfo.value.__cause__ or excinfo.value.__context__
    assert getattr(chained, "status_code", None) == 429


# ----------------------------------------------------------------- across dialects

RAW_CHAT = {
    "openai": ("/v1/chat/completions", {"model": "m"}),
    "anthropic": ("/v1/messages", {"model": "m", "max_tokens": 64}),
    "ollama": ("/api/chat", {"model": "m", "options": {}}),
}


@pytest.mark.parametrize("dialect", sorted(RAW_CHAT))
async def test_drop_mid_stream_in_every_dialect(upstream: FakeUpstream, dialect: str) -> None:
    path, body = RAW_CHAT[dialect]
    upstream.script(FakeReply.drop(after_chunks=2, text="one two three four five"))
    received: list[str] = []
    async with httpx.AsyncClient() as client:
        body = {**body, "stream": True, "messages": HI}
        async with client.stream("POST", f"{upstream.root_url}{path}", json=body) as r:
            with pytest.raises(httpx.RemoteProtocolError):
                async for line in r.aiter_lines():
                    if line.startswith(("data:", "{")):
                        received.append(line)
    assert len(received) == 2
    assert upstream.last_recorded.dialect == dialect


@pytest.mark.parametrize("model", [CLAUDE, OLLAMA_MODEL])
async def test_hang_and_echo_in_other_dialects(upstream: FakeUpstream, model: str) -> None:
    upstream.script(FakeReply.hang(30))
    # litellm 1.80 wraps an Ollama timeout in APIConnectionError.
    with pytest.raises((litellm.Timeout, litellm.APIConnectionError), match="Timeout"):
        await provider_chunks(upstream, model, timeout=0.5)
    assert text_of(await provider_chunks(upstream, model)) == "Echo: hi"


def test_normalised_messages_of_an_anthropic_tool_turn() -> None:
    body = {
        "system": [{"type": "text", "text": "Be terse."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "c1", "name": "w", "input": {"city": "Rome"}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "warm"}],
            },
        ],
    }
    record = RecordedRequest("anthropic", "/v1/messages", {}, body)
    assert record.messages == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"city": "Rome"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "warm"},
    ]
    assert last_tool_output(body) == "warm"
    assert echo_reply(body).text == "Echo: Weather?"  # a turn of tool results is no question
    ollama = {
        "messages": [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "w", "arguments": {"a": 1}}}],
            },
            {"role": "tool", "content": "out"},
        ]
    }
    normalised = RecordedRequest("ollama", "/api/chat", {}, ollama).messages
    assert normalised[0]["tool_calls"][0]["function"] == {"name": "w", "arguments": '{"a": 1}'}
    assert last_tool_output(ollama) == "out"
