"""One streamed model call, made at once: its first chunk is being read while the caller
does something else (the executor commits the run's start meanwhile)."""

from __future__ import annotations

import asyncio

from app.llm.adapter import ChatRequest, RetryPolicy, StreamEvent, stream_chat


class ModelCall:
    def __init__(self, request: ChatRequest, policy: RetryPolicy) -> None:
        self.request = request
        self._stream = stream_chat(request, policy).__aiter__()
        self._ahead: asyncio.Future[StreamEvent] | None = asyncio.ensure_future(anext(self._stream))
        self._reading: asyncio.Future[StreamEvent] | None = None

    def read(self) -> asyncio.Future[StreamEvent]:
        """The next chunk, being read (`StopAsyncIteration` at the end)."""
        future, self._ahead = self._ahead or asyncio.ensure_future(anext(self._stream)), None
        self._reading = future
        return future

    async def close(self) -> None:
        """End the call: a read still going is cancelled (the generator unwinds first)."""
        for future in (self._ahead, self._reading):
            if future is None:
                continue
            if not future.done():
                future.cancel()
                await asyncio.wait({future})
            elif not future.cancelled():
                future.exception()  # seen: an error nobody read is no "never retrieved"
        self._ahead = self._reading = None
        await self._stream.aclose()  # type: ignore[attr-defined]
