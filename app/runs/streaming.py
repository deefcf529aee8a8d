"""Server-sent events for a run: a subscriber to the run's event log, nothing more.

Each event carries its number as the SSE `id`, so a client whose connection broke can resume
with `GET …/runs/{run_id}?stream=true` and `Last-Event-ID` (the SDKs ignore the ids).
Keep-alive comments carry an empty `id:`: the openai SDKs turn a bare blank line after an
id into an event with no data, which they then fail to parse.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from app.auth.quotas import StreamSlot
from app.db import Database
from app.observability.metrics import OPEN_STREAMS
from app.runs.events import Event, EventHub, dumps, follow


async def _frames(
    db: Database, hub: EventHub, run_id: str, after_seq: int, known: list[Event] | None
) -> AsyncIterator[bytes]:
    # Each batch of events at hand goes out in one write.
    async for batch in follow(db, hub, run_id, after_seq, known):
        yield "".join(
            f"id: {item.seq}\nevent: {item.event}\ndata: {dumps(item.data)}\n\n" for item in batch
        ).encode()
    yield b"event: done\ndata: [DONE]\n\n"


class _CountedStream(EventSourceResponse):
    """Counted in `opengrove_sse_streams_open` from its start until it ends or the client
    goes (around the whole response: the event generator may never start, or be dropped);
    its project's stream slot is given back then too."""

    slot: StreamSlot | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        OPEN_STREAMS.inc()
        try:
            await super().__call__(scope, receive, send)
        finally:
            OPEN_STREAMS.dec()
            if self.slot is not None:
                self.slot.release()


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
    response = _CountedStream(
        _frames(db, hub, run_id, after_seq, known),
        sep="\n",
        ping=15,
        ping_message_factory=_keep_alive,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.slot = slot
    return response
