"""A lean HTTP/1.1 load generator client for the benchmarks: keep-alive connections on
asyncio protocols, responses parsed by httptools (uvicorn's own C parser).

Why not aiohttp: the load generator shares the machine's two cores with the server, and
aiohttp spends about 0.45 ms of client CPU per request (crud_bench, c=50), half of what the
server spends; that CPU is taken from the server being measured. This client does the same
work (a request, its full response, JSON decoded by the caller) for a fraction of it. No C
load generator (wrk, h2load) is installed here, and none could alternate create/list per
thread or read SSE event by event anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson


class _Response:
    def __init__(self) -> None:
        self.status = 0
        self.chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.headers_done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.keep_alive = True


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: _Response | None = None
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("the server closed the connection"))

    # httptools callbacks
    def on_status(self, _status: bytes) -> None:
        if self.response is not None:
            self.response.status = self.parser.get_status_code()

    def on_headers_complete(self) -> None:
        response = self.response
        if response is not None:
            response.keep_alive = self.parser.should_keep_alive()
            if not response.headers_done.done():
                response.headers_done.set_result(response.status)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response.chunks.put_nowait(body)

    def on_message_complete(self) -> None:
        response, self.response = self.response, None
        if response is not None:
            response.chunks.put_nowait(None)

    def _fail(self, error: BaseException) -> None:
        response, self.response = self.response, None
        if response is None:
            return
        if not response.headers_done.done():
            response.headers_done.set_exception(error)
        response.chunks.put_nowait(None)
        self.closed = True

    def send(self, raw: bytes) -> _Response:
        assert self.transport is not None and self.response is None
        self.response = _Response()
        self.transport.write(raw)
        return self.response


class LeanClient:
    """Keep-alive connections to one host, reused across requests (a pool without limit:
    the benchmarks bound concurrency themselves)."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._fixed_headers = f"Host: {self.host}:{self.port}\r\n{extra}".encode()
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()

    async def close(self) -> None:
        for connection in self._all:
            if connection.transport is not None:
                connection.transport.close()
        self._all.clear()
        self._idle.clear()

    def _raw(self, method: str, path: str, body: Any, headers: dict[str, str] | None) -> bytes:
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self._fixed_headers
        if headers:
            head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()
        if body is None:
            return head + b"\r\n"
        payload = orjson.dumps(body)
        return (
            head
            + b"Content-Type: application/json\r\nContent-Length: "
            + str(len(payload)).encode()
            + b"\r\n\r\n"
            + payload
        )

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
            self._all.discard(connection)
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(_Connection, self.host, self.port)
        self._all.add(connection)
        return connection

    def _release(self, connection: _Connection, response: _Response) -> None:
        if response.keep_alive and not connection.closed and connection.response is None:
            self._idle.append(connection)
        else:
            self._all.discard(connection)
            if connection.transport is not None:
                connection.transport.close()

    @contextlib.asynccontextmanager
    async def _exchange(
        self, method: str, path: str, body: Any, headers: dict[str, str] | None
    ) -> AsyncIterator[tuple[int, _Response]]:
        connection = await self._connection()
        response = connection.send(self._raw(method, path, body, headers))
        try:
            status = await response.headers_done
            yield status, response
        except BaseException:
            connection.closed = True  # a response read only in part: never reuse
            raise
        finally:
            self._release(connection, response)

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """The status and the JSON body (None when the body is not JSON)."""
        async with self._exchange(method, path, body, headers) as (status, response):
            parts = []
            while (chunk := await response.chunks.get()) is not None:
                parts.append(chunk)
        try:
            return status, orjson.loads(b"".join(parts))
        except orjson.JSONDecodeError:
            return status, None

    @contextlib.asynccontextmanager
    async def stream_lines(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> AsyncIterator[tuple[int, AsyncIterator[str]]]:
        """POST, then the status and the response body's lines (without line endings) as
        they arrive."""
        async with self._exchange("POST", path, body, headers) as (status, response):

            async def lines() -> AsyncIterator[str]:
                pending = b""
                while (chunk := await response.chunks.get()) is not None:
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    for line in complete:
                        yield line.rstrip(b"\r").decode()
                if pending:
                    yield pending.rstrip(b"\r").decode()

            yield status, lines()
