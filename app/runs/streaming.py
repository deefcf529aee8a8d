"""Server-sent events for a run: a subscriber to the run's event log, nothing more.

Each event carries its number as the SSE `id`, so a client whose connection broke can resume
with `GET …/runs/{run_id}?stream=true` and `Last-Event-ID` (the SDKs ignore the ids).
Keep-alive comments carry an empty `id:`: the openai SDKs turn a bare blank line after an
id into an event with no data, which they then fail to parse.

A client that stops reading is not waited for: each write gets `send_timeout` seconds (the
hub's; OPENGROVE_STREAM_SEND_TIMEOUT) to go out. One that does not stops the stream — it
unsubscribes at once, so the run never notices — and the client is sent an `error` event
(no `id`: its last id is still the last event it got, to resume from) if it takes it within
a few seconds more; then the connection ends. Writes are at most ~64 KiB, so the timeout
measures a client that reads nothing, not a long replay to a slow one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from app.auth.quotas import StreamSlot
from app.db import Database
from app.observability.metrics import OPEN_STREAMS
from app.runs.delivery import follow
from app.runs.events import Event, EventHub, dumps

logger = logging.getLogger("opengrove.streams")

WRITE_BYTES = 64 * 1024  # events at hand go out in writes of about this much at most
ERROR_GRACE_SECONDS = 5.0  # how long the `error` event waits for a dropped client to read


DONE = b"event: done\ndata: [DONE]\n\n"


class _Progress:
    done_sent = False  # the stream's last event went out: nothing was lost


async def _frames(
    db: Database,
    hub: EventHub,
    run_id: str,
    after_seq: int,
    known: list[Event] | None,
    progress: _Progress,
) -> AsyncIterator[bytes]:
    # The events at hand go out together, in as few writes as WRITE_BYTES allows. Closing
    # this generator stops following the run (aclosing: at once, not when collected).
    async with aclosing(follow(db, hub, run_id, after_seq, known)) as batches:
        async for batch in batches:
            parts: list[str] = []
            size = 0
            for item in batch:
                frame = f"id: {item.seq}\nevent: {item.event}\ndata: {dumps(item.data)}\n\n"
                if parts and size + len(frame) > WRITE_BYTES:
                    yield "".join(parts).encode()
                    parts, size = [], 0
                parts.append(frame)
                size += len(frame)
            if parts:
                yield "".join(parts).encode()
    yield DONE
    progress.done_sent = True  # asked for more: the write of DONE went out


def error_frame(message: str, code: str) -> bytes:
    data: dict[str, Any] = {"code": code, "message": message, "param": None, "type": "server_error"}
    return f"event: error\ndata: {dumps(data)}\n\n".encode()


class _CountedStream(EventSourceResponse):
    """Counted in `opengrove_sse_streams_open` from its start until it ends or the client
    goes (around the whole response: the event generator may never start, or be dropped);
    its project's stream slot is given back then too. Writes time out (see the module) after
    `send_timeout` (uvicorn waits for its buffer to drain before it writes, so a write cut
    short wrote nothing: the client never gets half an event)."""

    slot: StreamSlot | None = None
    run_id: str = ""
    progress: _Progress

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        OPEN_STREAMS.inc()
        try:
            try:
                await super().__call__(scope, receive, send)
            except* SendTimeoutError:
                await self._drop(send, self.progress.done_sent)
        finally:
            OPEN_STREAMS.dec()
            if self.slot is not None:
                self.slot.release()

    async def _stream_response(self, send: Send) -> None:
        """sse_starlette's own loop, with each write's timeout an asyncio timer instead of
        an anyio cancel scope: the scope cost a third of a stream's CPU with many streams
        (`_frames` yields bytes, so no conversion either)."""
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self.body_iterator:
            try:
                async with asyncio.timeout(self.send_timeout):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except TimeoutError:
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
                raise SendTimeoutError() from None
        async with self._send_lock:
            self.active = False
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _drop(self, send: Send, done_sent: bool) -> None:
        """The client stopped reading: stop following the run now, tell the client why."""
        await self.body_iterator.aclose()  # type: ignore[attr-defined]
        if done_sent:  # all of it went out but the response's end: end it, if it can be
            with anyio.move_on_after(ERROR_GRACE_SECONDS):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        logger.warning(
            "run %s: a stream's client took nothing for %.0f s: stream closed",
            self.run_id,
            self.send_timeout,
        )
        frame = error_frame(
            f"The stream was closed: the client did not read its events for "
            f"{self.send_timeout:g} seconds. Reconnect with GET "
            "/v1/threads/{thread_id}/runs/{run_id}?stream=true and the Last-Event-ID header "
            "(the id of the last event received) to get the rest.",
            "stream_timeout",
        )
        with anyio.move_on_after(ERROR_GRACE_SECONDS):
            await send({"type": "http.response.body", "body": frame, "more_body": False})


def _keep_alive() -> ServerSentEvent:
    return ServerSentEvent(comment="ping", id="", sep="\n")


def run_event_stream(
    db: Database,
    hub: EventHub,
    run_id: str,
    after_seq: int = -1,
    known: list[Event] | None = None,
    slot: StreamSlot | None = None,
) -> EventSourceResponse:
    progress = _Progress()
    response = _CountedStream(
        _frames(db, hub, run_id, after_seq, known, progress),
        sep="\n",
        ping=15,
        ping_message_factory=_keep_alive,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        send_timeout=hub.send_timeout or None,
    )
    response.slot = slot
    response.run_id = run_id
    response.progress = progress
    return response
