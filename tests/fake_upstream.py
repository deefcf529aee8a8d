"""A fake OpenAI-compatible upstream (chat completions, embeddings, models) over real HTTP.

Tests and benchmarks point litellm at it (`model="openai/<name>"`,
`api_base=upstream.base_url`, `api_key="fake"`) so the server's LLM adapter runs through the
real `litellm.acompletion(..., stream=True)` code path, with no mocking.

In-process use (uvicorn runs in a background thread with its own event loop)::

    with FakeUpstream() as upstream:
        upstream.script(FakeReply(text="Hello there"))
        upstream.script(FakeReply(tool_calls=[FakeToolCall("get_weather", {"city": "Paris"})]))
        upstream.script(FakeReply.error(500), FakeReply.error(500), FakeReply(text="finally"))
        ...
        assert upstream.requests[-1]["messages"][-1]["role"] == "tool"

Standalone (for benchmarks in another process)::

    python -m tests.fake_upstream --port 9100 --token-delay-ms 20

A standalone server can be scripted over HTTP via the `/__fake__/...` control endpoints
(`POST /__fake__/script` with a FakeReply dict or a list of them, `POST /__fake__/reset`,
`POST /__fake__/config` with `{"token_delay": seconds}`, `GET /__fake__/requests`,
`GET /__fake__/stats`).

When the script queue is empty every chat completion gets the default reply: an echo,
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
    """A scripted chat-completion reply, consumed FIFO by the next chat request.

    Content: `text` and/or `tool_calls` (text is streamed first). `finish_reason` defaults to
    "tool_calls" when there are tool calls, else "stop". `usage` overrides the computed usage.

    Failures (checked in this order):
      - `hang_seconds`: send nothing for that long (ends early if the client disconnects or
        the server stops); a client that is still waiting afterwards gets the normal reply.
      - `status`: reply with that HTTP status and an OpenAI error body (`Retry-After` header
        when `retry_after` is set) instead of a completion.
      - `drop_after_chunks`: close the TCP connection after that many SSE chunks (the first,
        role-only chunk counts; 0: before any response bytes; non-stream requests are always
        dropped before the response).
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
    """The default reply: echo the last user message."""
    last = ""
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "user":
            last = _content_text(message.get("content"))
    return FakeReply(text=f"Echo: {last}")


def _sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


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
    """The fake OpenAI-compatible server. See the module docstring."""

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
        self._requests: list[dict[str, Any]] = []
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
        return f"http://{self.host}:{self.port}/v1"

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
        """Snapshot of every chat-completion request body received, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def last_request(self) -> dict[str, Any]:
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

    def _next_reply(self, body: dict[str, Any]) -> FakeReply:
        with self._lock:
            self._requests.append(body)
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
            await self._chat(scope, receive, send, data)
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
            await _send_json(send, 200, {"requests": self.requests})
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

    async def _chat(self, scope: Scope, receive: Receive, send: Send, data: dict[str, Any]) -> None:
        reply = self._next_reply(data)

        if reply.hang_seconds is not None and reply.hang_seconds > 0:
            outcome = await self._hang(receive, reply.hang_seconds)
            if outcome == "disconnected":
                return
            if outcome == "stopping":
                await _send_error(
                    send, 503, "The fake upstream is shutting down.", etype="server_error"
                )
                return
        if reply.status is not None:
            etype, code, msg = _ERRORS.get(reply.status, ("api_error", None, "Injected error."))
            headers = []
            if reply.retry_after is not None:
                headers.append((b"retry-after", _fmt_seconds(reply.retry_after).encode()))
            await _send_error(
                send,
                reply.status,
                reply.error_message or msg,
                etype=reply.error_type or etype,
                code=reply.error_code or code,
                headers=headers,
            )
            return
        if reply.drop_after_chunks is not None and (
            reply.drop_after_chunks <= 0 or not data.get("stream")
        ):
            await _drop(scope, receive)
            return

        rendered = _RenderedReply(reply, data)
        if not data.get("stream"):
            await _send_json(send, 200, rendered.completion())
            return

        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        delay = self.token_delay if reply.token_delay is None else reply.token_delay
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-request-id", rendered.id.encode()),
                ],
            }
        )
        for sent, payload in enumerate(rendered.chunks(include_usage)):
            if reply.drop_after_chunks is not None and sent >= reply.drop_after_chunks:
                await _drop(scope, receive)
                return
            if sent and delay > 0:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": _sse(payload), "more_body": True})
        await send({"type": "http.response.body", "body": _sse("[DONE]"), "more_body": False})

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
    """A FakeReply rendered for one request: the non-stream body or the stream's chunks."""

    def __init__(self, reply: FakeReply, request: dict[str, Any]) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = str(request.get("model", "fake-model"))
        self.text = reply.text
        self.text_tokens: list[str] = _STREAM_TOKEN_RE.findall(reply.text) if reply.text else []
        self.calls = [
            (c.id or f"call_{uuid.uuid4().hex[:24]}", c.name, c.arguments_json())
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


def _usage(request: dict[str, Any], completion_tokens: int) -> dict[str, int]:
    messages = request.get("messages") or []
    # ~4 tokens of per-message overhead, like the real chat format.
    prompt = _count_words(messages) + 4 * len(messages) + _count_words(request.get("tools"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
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
