"""A fake LLM upstream over real HTTP, speaking three wire dialects.

* OpenAI: `POST /v1/chat/completions` (SSE chunks), `/v1/embeddings`, `/v1/models`;
  litellm `model="openai/<name>"`, `api_base=upstream.base_url`.
* Anthropic Messages: `POST /v1/messages` (also `/messages`, `/v1/v1/messages`; SSE events
  `message_start` … `message_stop`, Anthropic error bodies); litellm
  `model="anthropic/<name>"`, `api_base=upstream.root_url` (litellm appends `/v1/messages`).
* Ollama native chat: `POST /api/chat` (NDJSON lines, `done: true` with the counts),
  `GET /api/tags`, `POST /api/show`, `GET /api/version`; errors as `{"error": "..."}`;
  litellm `model="ollama_chat/<name>"`, `api_base=upstream.root_url`.

One FIFO script of `FakeReply`s drives all three dialects: text, tool calls, finish reasons,
usage, error statuses, hangs and drops are rendered in whichever dialect the request came in.
Tests and benchmarks point litellm at it so the server's LLM adapter runs through the real
`litellm.acompletion(..., stream=True)` code path, with no mocking.

In-process use (uvicorn runs in a background thread with its own event loop)::

    with FakeUpstream() as upstream:
        upstream.script(FakeReply(text="Hello there"))
        upstream.script(FakeReply(tool_calls=[FakeToolCall("get_weather", {"city": "Paris"})]))
        upstream.script(FakeReply.error(500), FakeReply.error(500), FakeReply(text="finally"))
        ...
        assert upstream.requests[-1]["messages"][-1]["role"] == "tool"
        # Any dialect: the raw body plus a normalised, OpenAI-shaped view of the messages.
        assert upstream.recorded[-1].dialect == "anthropic"
        assert upstream.recorded[-1].messages[-1]["role"] == "tool"

Standalone (for benchmarks in another process)::

    python -m tests.fake_upstream --port 9100 --token-delay-ms 20

A standalone server can be scripted over HTTP via the `/__fake__/...` control endpoints
(`POST /__fake__/script` with a FakeReply dict or a list of them, `POST /__fake__/reset`,
`POST /__fake__/config` with `{"token_delay": seconds}`, `GET /__fake__/requests`,
`GET /__fake__/stats`).

When the script queue is empty every chat request gets the default reply: an echo,
"Echo: <last user message text>".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import dataclasses
import hashlib
import json
import math
import re
import signal
import socket
import struct
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_MODELS = ("fake-model", "fake-embed")
OPENAI, ANTHROPIC, OLLAMA = "openai", "anthropic", "ollama"
DIALECTS = (OPENAI, ANTHROPIC, OLLAMA)

# Scope key under which our protocol subclass stashes the asyncio transport, so a scripted
# "connection drop" can really close the socket mid-response (ASGI has no API for that).
_TRANSPORT_KEY = "fake_upstream.transport"

# OpenAI-style error bodies for the common injected statuses: (type, code, message).
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}

# Anthropic error types for the injected statuses: (type, message).
_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}

# Finish reasons in a script are OpenAI's; each dialect names them its own way.
_ANTHROPIC_STOP = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}
# Ollama says "stop" after tool calls too (there is no "tool_calls" done_reason).
_OLLAMA_DONE = {"stop": "stop", "tool_calls": "stop", "length": "length"}

_WORD_RE = re.compile(r"\w+")
# A "token" for streaming: a word with its leading whitespace, like " world" in GPT tokenizers.
_STREAM_TOKEN_RE = re.compile(r"\s*\S+|\s+")


@dataclass
class FakeToolCall:
    """One tool call in a scripted reply. `arguments` may be a dict (JSON-encoded here)."""

    name: str
    arguments: str | dict[str, Any] = field(default_factory=dict)
    id: str | None = None  # default: a fresh "call_<hex>"

    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments)


@dataclass
class FakeReply:
    """A scripted chat reply, consumed FIFO by the next chat request of any dialect.

    Content: `text` and/or `tool_calls` (text is streamed first). `finish_reason` (OpenAI's
    names; translated per dialect: Anthropic `end_turn`/`tool_use`/`max_tokens`, Ollama
    `stop`/`length`) defaults to "tool_calls" when there are tool calls, else "stop". `usage`
    (OpenAI keys `prompt_tokens`/`completion_tokens`) overrides the computed usage.

    Failures (checked in this order):
      - `hang_seconds`: send nothing for that long (ends early if the client disconnects or
        the server stops); a client that is still waiting afterwards gets the normal reply.
      - `status`: reply with that HTTP status and the dialect's error body (`Retry-After`
        header when `retry_after` is set) instead of a completion. `error_type` overrides the
        error type (OpenAI `type`, Anthropic `error.type`).
      - `drop_after_chunks`: close the TCP connection after that many stream chunks (SSE
        chunks/events or NDJSON lines; the first, role-only chunk or `message_start` counts;
        0: before any response bytes; non-stream requests are always dropped before the
        response).
    """

    text: str | None = None
    tool_calls: list[FakeToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    status: int | None = None
    error_message: str | None = None
    error_type: str | None = None
    error_code: str | None = None
    retry_after: float | None = None
    hang_seconds: float | None = None
    drop_after_chunks: int | None = None
    token_delay: float | None = None  # seconds between chunks; None: the server's setting
    arg_chunk_chars: int = 8  # size of the partial-JSON argument fragments

    @classmethod
    def error(
        cls, status: int = 500, message: str | None = None, *, retry_after: float | None = None
    ) -> FakeReply:
        return cls(status=status, error_message=message, retry_after=retry_after)

    @classmethod
    def rate_limited(cls, retry_after: float = 1.0) -> FakeReply:
        return cls(status=429, retry_after=retry_after)

    @classmethod
    def hang(cls, seconds: float = 3600.0) -> FakeReply:
        return cls(hang_seconds=seconds)

    @classmethod
    def drop(cls, after_chunks: int = 2, text: str = "this reply is cut off midway") -> FakeReply:
        return cls(text=text, drop_after_chunks=after_chunks)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FakeReply:
        data = dict(data)
        calls = [FakeToolCall(**c) for c in data.pop("tool_calls", None) or []]
        return cls(tool_calls=calls, **data)


ScriptItem = FakeReply | Callable[[dict[str, Any]], FakeReply]


def fake_embedding(text: str, dim: int = 64) -> list[float]:
    """Deterministic, L2-normalised, signed hashed bag-of-words vector.

    Texts sharing words share vector components, so cosine similarity tracks word overlap.
    Text without words maps to the first basis vector (never the zero vector, which breaks
    cosine similarity in vector stores).
    """
    vec = [0.0] * dim
    for word in _WORD_RE.findall(text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "little") % dim
        vec[index] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vec))
    if norm == 0.0:
        vec[0] = 1.0
        return vec
    return [v / norm for v in vec]


def _count_words(value: Any) -> int:
    """Rough token count of any JSON-ish value (strings anywhere inside it)."""
    if isinstance(value, str):
        return len(_WORD_RE.findall(value))
    if isinstance(value, dict):
        return sum(_count_words(v) for v in value.values())
    if isinstance(value, list):
        return sum(_count_words(v) for v in value)
    return 0


def _content_text(content: Any) -> str:
    """Text of a message `content`: a string or a list of parts ({"type": "text", ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def echo_reply(body: dict[str, Any]) -> FakeReply:
    """The default reply: echo the last user message (any dialect)."""
    last = ""
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "user":
            text = _content_text(message.get("content"))
            if text or isinstance(message.get("content"), str):
                last = text  # (an Anthropic user turn of only tool results is not a question)
    return FakeReply(text=f"Echo: {last}")


def normalise_messages(dialect: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A request's messages in OpenAI's shape, whatever the dialect it was sent in.

    Anthropic: the top-level `system` becomes a system message, `tool_use` blocks become
    `tool_calls` (arguments JSON-encoded), each `tool_result` block becomes a `tool` message.
    Ollama: tool-call arguments (dicts) are JSON-encoded; `tool` messages carry no call id.
    Text content is flattened to a string.
    """
    if dialect == OPENAI:
        return list(body.get("messages") or [])
    out: list[dict[str, Any]] = []
    if dialect == ANTHROPIC and body.get("system"):
        out.append({"role": "system", "content": _content_text(body["system"])})
    for message in body.get("messages") or []:
        role = message.get("role")
        content = message.get("content")
        if dialect == OLLAMA:
            norm: dict[str, Any] = {"role": role, "content": content or ""}
            if message.get("tool_calls"):
                norm["tool_calls"] = [
                    {
                        "type": "function",
                        "function": {
                            "name": c["function"]["name"],
                            "arguments": _json_text(c["function"].get("arguments")),
                        },
                    }
                    for c in message["tool_calls"]
                ]
            out.append(norm)
            continue
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        blocks = [b for b in content or [] if isinstance(b, dict)]
        text = _content_text(blocks)
        calls = [
            {
                "id": b.get("id"),
                "type": "function",
                "function": {"name": b.get("name"), "arguments": _json_text(b.get("input"))},
            }
            for b in blocks
            if b.get("type") == "tool_use"
        ]
        results = [
            {
                "role": "tool",
                "tool_call_id": b.get("tool_use_id"),
                "content": _content_text(b.get("content")),
            }
            for b in blocks
            if b.get("type") == "tool_result"
        ]
        out.extend(results)
        if text or calls or not results:
            norm = {"role": role, "content": text}
            if calls:
                norm["tool_calls"] = calls
            out.append(norm)
    return out


def last_tool_output(body: dict[str, Any]) -> str:
    """The text of the tool output a request ends with, in any dialect (for scripted callables,
    which get the raw body): OpenAI's and Ollama's last `tool` message, or the last
    `tool_result` block of Anthropic's final user turn."""
    messages = body.get("messages") or []
    content = messages[-1].get("content") if messages else None
    if isinstance(content, list):
        results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        if results:
            return _content_text(results[-1].get("content"))
    return _content_text(content)


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value if value is not None else {})


@dataclass(frozen=True)
class RecordedRequest:
    """One chat request as received: its dialect, path, headers and raw JSON body."""

    dialect: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The messages in OpenAI's shape (see `normalise_messages`)."""
        return normalise_messages(self.dialect, self.body)

    @property
    def tool_names(self) -> list[str]:
        """Names of the tools offered to the model, in order."""
        names = []
        for tool in self.body.get("tools") or []:
            function = tool.get("function")
            names.append(function["name"] if isinstance(function, dict) else tool.get("name"))
        return names

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    def to_dict(self) -> dict[str, Any]:
        return {"dialect": self.dialect, "path": self.path, "body": self.body}


def _sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()


def _ndjson(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def _make_protocol_class(owner: FakeUpstream) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, plus connection counting, TCP_NODELAY and transport stashing."""
    base: type[Any]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools ships with uvicorn[standard]
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol

    class _Protocol(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            owner._count_connection()
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Streaming many tiny SSE writes: don't let Nagle batch them (TTFT benchmarks).
                with contextlib.suppress(OSError, AttributeError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(transport)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # The request's ASGI task is created during super() but only runs after we
            # return, so the scope it sees already carries the transport.
            scope = getattr(self, "scope", None)
            if scope is not None:
                scope[_TRANSPORT_KEY] = self.transport

    return _Protocol


class FakeUpstream:
    """The fake LLM server (OpenAI, Anthropic and Ollama dialects). See the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token_delay: float = 0.0,
        embedding_dim: int = 64,
        models: tuple[str, ...] | list[str] = DEFAULT_MODELS,
        default_reply: Callable[[dict[str, Any]], FakeReply] = echo_reply,
        backlog: int = 4096,
    ) -> None:
        self.host = host
        self.port = port  # the real port once started (0 means "pick a free one")
        # Seconds slept before every streamed chunk but the first (role-only) one, so the
        # first token also arrives after one delay. 0: no sleeping at all.
        self.token_delay = token_delay
        self.embedding_dim = embedding_dim
        self.models = list(models)
        self.default_reply = default_reply
        self.backlog = backlog

        # Everything below is shared between the test thread and the server thread.
        self._lock = threading.Lock()
        self._queue: collections.deque[ScriptItem] = collections.deque()
        self._requests: list[RecordedRequest] = []
        self._embedding_requests: list[dict[str, Any]] = []
        self._embedding_failures: collections.deque[int] = collections.deque()
        self._connections = 0

        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._startup_error: BaseException | None = None

    # ----------------------------------------------------------------- public API

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (with `/v1`)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """The server root: litellm's `api_base` for Anthropic (it appends `/v1/messages`) and
        Ollama (it appends `/api/chat`)."""
        return f"http://{self.host}:{self.port}"

    def script(self, *replies: ScriptItem) -> None:
        """Queue replies (or callables `body -> FakeReply`) for the next chat requests, FIFO."""
        with self._lock:
            self._queue.extend(replies)

    def fail_next(self, n: int, status: int = 500, *, retry_after: float | None = None) -> None:
        """Append `n` error replies to the queue (e.g. then script the reply that succeeds)."""
        self.script(*(FakeReply.error(status, retry_after=retry_after) for _ in range(n)))

    def fail_next_embeddings(self, n: int, status: int = 500) -> None:
        """The next `n` embedding requests get an OpenAI error with `status` (then succeed)."""
        with self._lock:
            self._embedding_failures.extend([status] * n)

    @property
    def pending(self) -> int:
        """Scripted replies not yet consumed."""
        with self._lock:
            return len(self._queue)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Snapshot of every chat request's raw JSON body (any dialect), oldest first."""
        with self._lock:
            return [r.body for r in self._requests]

    @property
    def last_request(self) -> dict[str, Any]:
        return self.last_recorded.body

    @property
    def recorded(self) -> list[RecordedRequest]:
        """Every chat request with its dialect, path and headers (`.messages`: normalised)."""
        with self._lock:
            return list(self._requests)

    @property
    def last_recorded(self) -> RecordedRequest:
        with self._lock:
            if not self._requests:
                raise AssertionError("the fake upstream has received no chat request")
            return self._requests[-1]

    @property
    def embedding_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._embedding_requests)

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted since start/reset (shows client connection reuse)."""
        with self._lock:
            return self._connections

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Block until at least `n` chat requests were received; return them."""
        deadline = time.monotonic() + timeout
        while True:
            reqs = self.requests
            if len(reqs) >= n:
                return reqs
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} chat requests, got {len(reqs)}")
            time.sleep(0.005)

    def reset(self) -> None:
        """Forget scripted replies, recorded requests and the connection count."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()
            self._embedding_requests.clear()
            self._embedding_failures.clear()
            self._connections = 0

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("already started")
        # Bind here, in the caller's thread: the port is known before start() returns and
        # port=0 cannot race with another process picking the same free port.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(self.backlog)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._asgi,
            http=_make_protocol_class(self),
            interface="asgi3",  # auto-detection misreads a bound method as ASGI2
            proxy_headers=False,
            ws="none",
            lifespan="off",
            access_log=False,
            log_config=None,  # leave the process' logging configuration alone
            backlog=self.backlog,
            timeout_keep_alive=60,  # don't drop idle pooled client connections under tests
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._startup_error = None
        self._thread = threading.Thread(
            target=self._run, args=(config, sock), name=f"fake-upstream:{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if self._startup_error is not None or not self._thread.is_alive():
                self._thread = None
                raise RuntimeError("fake upstream failed to start") from self._startup_error
            if time.monotonic() > deadline:
                raise RuntimeError("fake upstream did not start within 10s")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        server, thread, loop, stopping = self._server, self._thread, self._loop, self._stopping
        if server is None or thread is None:
            return
        server.should_exit = True
        if loop is not None and stopping is not None:
            # Wakes requests blocked in a scripted hang, so shutdown doesn't wait for them.
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=10)
        self._server = self._thread = None
        self._loop = self._stopping = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- server thread

    def _run(self, config: uvicorn.Config, sock: socket.socket) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            assert self._server is not None
            await self._server.serve(sockets=[sock])

        try:
            # uvloop when installed (what production-like benchmarks would use).
            with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
                runner.run(serve())
        except BaseException as exc:
            self._startup_error = exc
        finally:
            sock.close()

    def _count_connection(self) -> None:
        with self._lock:
            self._connections += 1

    def _next_reply(self, record: RecordedRequest) -> FakeReply:
        body = record.body
        with self._lock:
            self._requests.append(record)
            item = self._queue.popleft() if self._queue else None
        if item is None:
            return self.default_reply(body)
        return item if isinstance(item, FakeReply) else item(body)

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        path: str = scope["path"].rstrip("/")
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            await _send_error(send, 400, "Request body is not valid JSON.")
            return

        if method == "POST" and path == "/v1/chat/completions":
            await self._chat(scope, receive, send, self._record(OPENAI, scope, data))
        elif method == "POST" and path.endswith("/messages"):
            # /v1/messages; litellm given an api_base ending in /v1 sends /v1/v1/messages.
            await self._chat(scope, receive, send, self._record(ANTHROPIC, scope, data))
        elif path.startswith(("/api/", "/v1/api/")):
            await self._ollama(scope, receive, send, method, path.removeprefix("/v1"), data)
        elif method == "POST" and path == "/v1/embeddings":
            await self._embeddings(send, data)
        elif method == "GET" and path == "/v1/models":
            models = [self._model_obj(m) for m in self.models]
            await _send_json(send, 200, {"object": "list", "data": models})
        elif method == "GET" and path.startswith("/v1/models/"):
            await _send_json(send, 200, self._model_obj(path.removeprefix("/v1/models/")))
        elif path.startswith("/__fake__/"):
            await self._control(send, method, path.removeprefix("/__fake__/"), data)
        else:
            await _send_error(send, 404, f"Unknown endpoint {method} {path}.", code="not_found")

    @staticmethod
    def _record(dialect: str, scope: Scope, body: Any) -> RecordedRequest:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if not isinstance(body, dict):
            body = {"_body": body}
        return RecordedRequest(dialect, scope["path"], headers, body)

    async def _ollama(
        self, scope: Scope, receive: Receive, send: Send, method: str, path: str, data: Any
    ) -> None:
        if method == "POST" and path == "/api/chat":
            await self._chat(scope, receive, send, self._record(OLLAMA, scope, data))
        elif method == "GET" and path == "/api/tags":
            tags = [_ollama_tag(m) for m in self.models]
            await _send_json(send, 200, {"models": tags})
        elif method == "POST" and path == "/api/show":
            # litellm reads tool support from the template and the context length from here.
            await _send_json(send, 200, _ollama_show(str(data.get("name") or data.get("model"))))
        elif method == "GET" and path == "/api/version":
            await _send_json(send, 200, {"version": "0.12.0"})
        else:
            await _send_json(send, 404, {"error": f"unknown endpoint {method} {path}"})

    @staticmethod
    def _model_obj(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "fake-upstream"}

    async def _control(self, send: Send, method: str, what: str, data: Any) -> None:
        if method == "POST" and what == "script":
            items = data if isinstance(data, list) else [data]
            self.script(*(FakeReply.from_dict(d) for d in items))
            await _send_json(send, 200, {"pending": self.pending})
        elif method == "POST" and what == "reset":
            self.reset()
            await _send_json(send, 200, {"ok": True})
        elif method == "POST" and what == "config":
            if "token_delay" in data:
                self.token_delay = float(data["token_delay"])
            await _send_json(send, 200, {"token_delay": self.token_delay})
        elif method == "GET" and what == "requests":
            log = [r.to_dict() for r in self.recorded]
            await _send_json(send, 200, {"requests": [r["body"] for r in log], "log": log})
        elif method == "GET" and what == "stats":
            stats = {
                "requests": len(self.requests),
                "embedding_requests": len(self.embedding_requests),
                "connections_accepted": self.connections_accepted,
                "pending": self.pending,
            }
            await _send_json(send, 200, stats)
        else:
            await _send_error(send, 404, f"Unknown control endpoint {method} {what}.")

    async def _embeddings(self, send: Send, data: dict[str, Any]) -> None:
        with self._lock:
            self._embedding_requests.append(data)
            failure = self._embedding_failures.popleft() if self._embedding_failures else None
        if failure is not None:
            etype, code, msg = _ERRORS.get(failure, ("api_error", None, "Injected error."))
            await _send_error(send, failure, msg, etype=etype, code=code)
            return
        raw = data.get("input", "")
        inputs: list[Any] = raw if isinstance(raw, list) else [raw]
        if inputs and all(isinstance(i, int) for i in inputs):
            inputs = [inputs]  # a single pre-tokenised input
        # Token-array inputs have no text; hash their ids as words (still deterministic).
        texts = [i if isinstance(i, str) else " ".join(f"t{t}" for t in i) for i in inputs]
        dim = int(data.get("dimensions") or self.embedding_dim)
        # The openai SDK asks for base64 by default (and decodes it), so both formats matter.
        as_base64 = data.get("encoding_format") == "base64"
        items = []
        for index, text in enumerate(texts):
            vec = fake_embedding(text, dim)
            embedding: list[float] | str = (
                base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode() if as_base64 else vec
            )
            items.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(max(1, _count_words(t)) for t in texts)
        await _send_json(
            send,
            200,
            {
                "object": "list",
                "data": items,
                "model": data.get("model", "fake-embed"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    async def _chat(
        self, scope: Scope, receive: Receive, send: Send, record: RecordedRequest
    ) -> None:
        dialect, data = record.dialect, record.body
        reply = self._next_reply(record)

        if reply.hang_seconds is not None and reply.hang_seconds > 0:
            outcome = await self._hang(receive, reply.hang_seconds)
            if outcome == "disconnected":
                return
            if outcome == "stopping":
                await _send_dialect_error(
                    send, dialect, 503, "The fake upstream is shutting down.", "server_error"
                )
                return
        if reply.status is not None:
            headers = []
            if reply.retry_after is not None:
                headers.append((b"retry-after", _fmt_seconds(reply.retry_after).encode()))
            await _send_dialect_error(
                send,
                dialect,
                reply.status,
                reply.error_message,
                reply.error_type,
                code=reply.error_code,
                headers=headers,
            )
            return
        if reply.drop_after_chunks is not None and (
            reply.drop_after_chunks <= 0 or not data.get("stream")
        ):
            await _drop(scope, receive)
            return

        rendered = _RenderedReply(reply, data, dialect)
        if not data.get("stream"):
            await _send_json(send, 200, rendered.body())
            return

        delay = self.token_delay if reply.token_delay is None else reply.token_delay
        content_type = b"application/x-ndjson" if dialect == OLLAMA else b"text/event-stream"
        headers = [(b"content-type", content_type), (b"cache-control", b"no-cache")]
        if dialect == OPENAI:
            headers.append((b"x-request-id", rendered.id.encode()))
        elif dialect == ANTHROPIC:
            headers.append((b"request-id", f"req_{uuid.uuid4().hex[:24]}".encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for sent, payload in enumerate(rendered.stream()):
            if reply.drop_after_chunks is not None and sent >= reply.drop_after_chunks:
                await _drop(scope, receive)
                return
            if sent and delay > 0:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": payload, "more_body": True})
        await send(
            {"type": "http.response.body", "body": rendered.stream_end(), "more_body": False}
        )

    async def _hang(self, receive: Receive, seconds: float) -> str:
        """Wait up to `seconds`: "elapsed", or "disconnected"/"stopping" if that came first."""

        async def client_gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        assert self._stopping is not None
        gone = asyncio.ensure_future(client_gone())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait(
                [gone, stopping], timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            gone.cancel()
            stopping.cancel()
        if gone.done() and not gone.cancelled():
            return "disconnected"
        return "stopping" if stopping.done() and not stopping.cancelled() else "elapsed"


class _RenderedReply:
    """A FakeReply rendered for one request in its dialect: the non-stream body or the
    stream's chunks (bytes: SSE events, or NDJSON lines for Ollama)."""

    def __init__(self, reply: FakeReply, request: dict[str, Any], dialect: str = OPENAI) -> None:
        self.dialect = dialect
        self.request = request
        prefix = {OPENAI: "chatcmpl-", ANTHROPIC: "msg_", OLLAMA: ""}[dialect]
        self.id = f"{prefix}{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = str(request.get("model", "fake-model"))
        self.text = reply.text
        self.text_tokens: list[str] = _STREAM_TOKEN_RE.findall(reply.text) if reply.text else []
        call_prefix = "toolu_" if dialect == ANTHROPIC else "call_"
        self.calls = [
            (c.id or f"{call_prefix}{uuid.uuid4().hex[:24]}", c.name, c.arguments_json())
            for c in reply.tool_calls
        ]
        size = max(1, reply.arg_chunk_chars)
        # Each call's JSON arguments cut into fragments, as a model streams them.
        self.fragments = [
            [a[i : i + size] for i in range(0, len(a), size)] for _, _, a in self.calls
        ]
        self.finish_reason = reply.finish_reason or ("tool_calls" if self.calls else "stop")
        completion_tokens = len(self.text_tokens) + sum(map(len, self.fragments))
        self.usage = reply.usage or _usage(request, completion_tokens)

    # ------------------------------------------------------------- any dialect

    def body(self) -> dict[str, Any]:
        if self.dialect == ANTHROPIC:
            return self.anthropic_message()
        if self.dialect == OLLAMA:
            return self.ollama_final(self.ollama_message(self.text or "", with_calls=True))
        return self.completion()

    def stream(self) -> Iterator[bytes]:
        if self.dialect == ANTHROPIC:
            for name, event in self.anthropic_events():
                yield _sse(event, event=name)
        elif self.dialect == OLLAMA:
            for line in self.ollama_lines():
                yield _ndjson(line)
        else:
            include = bool((self.request.get("stream_options") or {}).get("include_usage"))
            for chunk in self.chunks(include):
                yield _sse(chunk)

    def stream_end(self) -> bytes:
        """The last bytes of a complete stream (OpenAI's `[DONE]`; nothing for the others)."""
        return _sse("[DONE]") if self.dialect == OPENAI else b""

    # ------------------------------------------------------------- OpenAI

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text, "refusal": None}
        if self.calls:
            message["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args in self.calls
            ]
        choice = {"index": 0, "message": message, "logprobs": None}
        return {
            **self._envelope("chat.completion"),
            "choices": [{**choice, "finish_reason": self.finish_reason}],
            "usage": self.usage,
        }

    def chunks(self, include_usage: bool) -> Iterator[dict[str, Any]]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            out = {**self._envelope("chat.completion.chunk"), "choices": [choice]}
            if include_usage:
                out["usage"] = None  # like OpenAI: null on every chunk but the last
            return out

        yield chunk({"role": "assistant", "content": "" if self.text_tokens else None})
        for token in self.text_tokens:
            yield chunk({"content": token})
        for index, ((cid, name, _), frags) in enumerate(
            zip(self.calls, self.fragments, strict=True)
        ):
            # id, type and name only in the first delta of each call; then argument fragments.
            first = {"index": index, "id": cid, "type": "function"}
            yield chunk({"tool_calls": [{**first, "function": {"name": name, "arguments": ""}}]})
            for frag in frags:
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": frag}}]})
        yield chunk({}, self.finish_reason)
        if include_usage:
            yield {**self._envelope("chat.completion.chunk"), "choices": [], "usage": self.usage}

    def _envelope(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_fake",
        }

    # ------------------------------------------------------------- Anthropic

    @property
    def stop_reason(self) -> str:
        return _ANTHROPIC_STOP.get(self.finish_reason, self.finish_reason)

    def anthropic_message(self) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if self.text:
            content.append({"type": "text", "text": self.text})
        for cid, name, args in self.calls:
            content.append({"type": "tool_use", "id": cid, "name": name, "input": _loads(args)})
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self.usage.get("prompt_tokens", 0),
                "output_tokens": self.usage.get("completion_tokens", 0),
            },
        }

    def anthropic_events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event name, data) pairs, as the Messages API streams them."""
        start = {**self.anthropic_message(), "content": [], "stop_reason": None}
        start["usage"] = {"input_tokens": self.usage.get("prompt_tokens", 0), "output_tokens": 1}
        yield "message_start", {"type": "message_start", "message": start}
        yield "ping", {"type": "ping"}
        index = 0
        if self.text_tokens:
            block = {"type": "text", "text": ""}
            yield "content_block_start", _block_start(index, block)
            for token in self.text_tokens:
                yield "content_block_delta", _block_delta(index, "text_delta", text=token)
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
            index += 1
        for (cid, name, _), frags in zip(self.calls, self.fragments, strict=True):
            block = {"type": "tool_use", "id": cid, "name": name, "input": {}}
            yield "content_block_start", _block_start(index, block)
            for frag in frags:
                yield "content_block_delta", _block_delta(index, "input_json_delta", frag)
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
            index += 1
        delta = {"stop_reason": self.stop_reason, "stop_sequence": None}
        usage = {"output_tokens": self.usage.get("completion_tokens", 0)}
        yield "message_delta", {"type": "message_delta", "delta": delta, "usage": usage}
        yield "message_stop", {"type": "message_stop"}

    # ------------------------------------------------------------- Ollama

    def ollama_message(self, content: str, *, with_calls: bool = False) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if with_calls and self.calls:
            message["tool_calls"] = [
                {"function": {"name": name, "arguments": _loads(args)}}
                for _, name, args in self.calls
            ]
        return message

    def ollama_chunk(self, message: dict[str, Any]) -> dict[str, Any]:
        created_at = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(self.created))
        return {"model": self.model, "created_at": created_at, "message": message, "done": False}

    def ollama_final(self, message: dict[str, Any]) -> dict[str, Any]:
        return {
            **self.ollama_chunk(message),
            "done": True,
            "done_reason": _OLLAMA_DONE.get(self.finish_reason, self.finish_reason),
            "total_duration": 1_000_000,
            "load_duration": 1_000,
            "prompt_eval_count": self.usage.get("prompt_tokens", 0),
            "prompt_eval_duration": 1_000,
            "eval_count": self.usage.get("completion_tokens", 0),
            "eval_duration": 1_000,
        }

    def ollama_lines(self) -> Iterator[dict[str, Any]]:
        """Ollama streams text token by token, and tool calls whole, in one chunk."""
        for token in self.text_tokens:
            yield self.ollama_chunk(self.ollama_message(token))
        if self.calls:
            yield self.ollama_chunk(self.ollama_message("", with_calls=True))
        yield self.ollama_final(self.ollama_message(""))


def _block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def _block_delta(
    index: int, kind: str, partial_json: str | None = None, text: str | None = None
) -> dict[str, Any]:
    delta = {"type": kind, "text": text} if text is not None else {"type": kind}
    if partial_json is not None:
        delta["partial_json"] = partial_json
    return {"type": "content_block_delta", "index": index, "delta": delta}


def _loads(arguments: str) -> Any:
    """Tool arguments as JSON for dialects that send objects (broken JSON stays a string)."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _usage(request: dict[str, Any], completion_tokens: int) -> dict[str, int]:
    messages = request.get("messages") or []
    # ~4 tokens of per-message overhead, like the real chat format.
    prompt = _count_words(messages) + 4 * len(messages) + _count_words(request.get("tools"))
    prompt += _count_words(request.get("system"))  # Anthropic's top-level system prompt
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


def _ollama_tag(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-01-01T00:00:00Z",
        "size": 1,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {"format": "gguf", "family": "llama", "parameter_size": "1B"},
    }


def _ollama_show(name: str) -> dict[str, Any]:
    return {
        "modelfile": f"FROM {name}",
        "parameters": "",
        # litellm decides tool support by looking for "tools" in the template.
        "template": "{{ if .Tools }}[AVAILABLE_TOOLS] {{ .Tools }}{{ end }}{{ .Prompt }}",
        "details": {"format": "gguf", "family": "llama", "parameter_size": "1B"},
        "model_info": {"general.architecture": "llama", "llama.context_length": 131072},
        "capabilities": ["completion", "tools"],
    }


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


async def _send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_error(
    send: Send,
    status: int,
    message: str,
    *,
    etype: str = "invalid_request_error",
    code: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    error = {"message": message, "type": etype, "param": None, "code": code}
    await _send_json(send, status, {"error": error}, headers)


async def _send_dialect_error(
    send: Send,
    dialect: str,
    status: int,
    message: str | None = None,
    etype: str | None = None,
    *,
    code: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An error response shaped like the dialect's real API (defaults per status)."""
    if dialect == ANTHROPIC:
        default_type, default_msg = _ANTHROPIC_ERRORS.get(
            status, ("api_error" if status >= 500 else "invalid_request_error", "Injected error.")
        )
        error = {"type": etype or default_type, "message": message or default_msg}
        await _send_json(send, status, {"type": "error", "error": error}, headers)
    elif dialect == OLLAMA:
        default = _ERRORS.get(status, ("", None, "Injected error."))[2]
        await _send_json(send, status, {"error": message or default}, headers)
    else:
        default_etype, default_code, default_msg = _ERRORS.get(
            status, ("api_error", None, "Injected error.")
        )
        await _send_error(
            send,
            status,
            message or default_msg,
            etype=etype or default_etype,
            code=code or default_code,
            headers=headers,
        )


async def _drop(scope: Scope, receive: Receive) -> None:
    """Close the TCP connection under the in-flight response (simulated network drop)."""
    transport = scope.get(_TRANSPORT_KEY)
    if transport is None:  # pragma: no cover - always set by our protocol class
        raise RuntimeError("simulated connection drop")
    transport.close()
    # Wait until uvicorn has seen the disconnect, so it doesn't log the unfinished response.
    while (await receive())["type"] != "http.disconnect":
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible upstream server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token-delay-ms", type=float, default=0.0, help="delay between chunks")
    parser.add_argument("--embedding-dim", type=int, default=64)
    args = parser.parse_args(argv)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    upstream = FakeUpstream(
        host=args.host,
        port=args.port,
        token_delay=args.token_delay_ms / 1000.0,
        embedding_dim=args.embedding_dim,
    )
    with upstream:
        # Benchmarks wait for this line (and parse the URL from it when --port is 0).
        print(f"fake upstream listening on {upstream.base_url}", flush=True)
        done.wait()


if __name__ == "__main__":
    main()
