"""Dense embeddings through litellm (any provider litellm speaks to).

Optional: only used when an embedding model is configured; without one, retrieval is
lexical only. litellm is imported lazily because importing it takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

_RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class EmbeddingError(Exception):
    pass


def _is_retryable(exc: BaseException) -> bool:
    import litellm

    permanent = (
        litellm.BadRequestError,
        litellm.AuthenticationError,
        litellm.NotFoundError,
        litellm.UnsupportedParamsError,
    )
    if isinstance(exc, permanent):
        return False
    transient = (
        litellm.RateLimitError,
        litellm.APIConnectionError,
        litellm.Timeout,
        litellm.InternalServerError,
        litellm.ServiceUnavailableError,
        litellm.BadGatewayError,
        asyncio.TimeoutError,
        ConnectionError,
    )
    if isinstance(exc, transient):
        return True
    return getattr(exc, "status_code", None) in _RETRYABLE_STATUS


class Embedder:
    """Embeds texts in batches, retrying transient provider errors with backoff."""

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 64,
        concurrency: int = 1,
        max_retries: int = 4,
        initial_backoff: float = 0.5,
        max_backoff: float = 20.0,
        timeout: float = 60.0,
        extra_params: Mapping[str, Any] | None = None,
    ) -> None:
        if batch_size < 1 or concurrency < 1 or max_retries < 0:
            raise ValueError("batch_size and concurrency must be >= 1, max_retries >= 0.")
        self.model = model
        self.api_base = api_base
        self.api_key = api_key
        self.dimensions = dimensions
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.extra_params = dict(extra_params or {})
        self._semaphore = asyncio.Semaphore(concurrency)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order."""
        batches = [
            list(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)
        ]
        results = await asyncio.gather(*(self._embed_batch(batch) for batch in batches))
        return [vector for batch in results for vector in batch]

    async def embed_query(self, text: str) -> list[float]:
        return (await self.embed([text]))[0]

    async def dimension(self) -> int:
        """The model's output size (one request), for configuring the vector index."""
        return self.dimensions or len(await self.embed_query("dimension probe"))

    async def _embed_batch(self, batch: list[str]) -> list[list[float]]:
        # Providers reject empty strings; a space embeds as "nothing" everywhere.
        inputs = [text if text.strip() else " " for text in batch]
        attempt = 0
        async with self._semaphore:
            while True:
                try:
                    return _vectors(await self._call(inputs), len(inputs))
                except Exception as exc:
                    if attempt >= self.max_retries or not _is_retryable(exc):
                        raise EmbeddingError(
                            f"Embedding with {self.model!r} failed after {attempt + 1} "
                            f"attempt(s): {exc}"
                        ) from exc
                    delay = min(self.max_backoff, self.initial_backoff * 2**attempt)
                    delay *= 0.5 + random.random() / 2  # jitter: don't retry in lockstep
                    logger.warning("embedding attempt %d failed (%s); retrying", attempt + 1, exc)
                    attempt += 1
                    await asyncio.sleep(delay)

    async def _call(self, inputs: list[str]) -> Any:
        import litellm

        params: dict[str, Any] = {"timeout": self.timeout, **self.extra_params}
        if self.api_base:
            params["api_base"] = self.api_base
        if self.api_key:
            params["api_key"] = self.api_key
        if self.dimensions:
            params["dimensions"] = self.dimensions
        return await litellm.aembedding(model=self.model, input=inputs, **params)


def _field(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, Mapping) else getattr(item, key, None)


def _vectors(response: Any, expected: int) -> list[list[float]]:
    """Vectors from an OpenAI-shaped response, ordered by each item's `index`."""
    data = _field(response, "data") or []
    items: list[tuple[int, list[float]]] = []
    for position, item in enumerate(data):
        index = _field(item, "index")
        embedding = _field(item, "embedding")
        if not isinstance(embedding, Sequence):
            raise EmbeddingError("Provider returned an item without an embedding list.")
        items.append((position if index is None else int(index), [float(x) for x in embedding]))
    if len(items) != expected:
        raise EmbeddingError(f"Provider returned {len(items)} embeddings for {expected} inputs.")
    items.sort(key=lambda pair: pair[0])
    return [vector for _, vector in items]


async def drain_litellm_logging(wait_seconds: float = 5.0) -> None:
    """Let litellm's background logging worker finish its queue; call before the loop ends.

    litellm runs success callbacks on a worker task. On Python 3.11, cancelling that task
    just as a callback completes loses the cancellation (an asyncio.wait_for race), so
    the event loop's shutdown waits on it forever. An idle worker cancels cleanly.
    """
    if "litellm" not in sys.modules:
        return
    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

    with contextlib.suppress(Exception):
        await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), wait_seconds)
