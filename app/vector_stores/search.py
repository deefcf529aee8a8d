"""Search over vector stores: `search_stores`, the one multi-query search behind both
`POST /vector_stores/{id}/search` (`search_store`) and the runs' file_search tool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.llm.routing import ModelRouter
from app.retrieval.embeddings import Embedder, EmbeddingError
from app.retrieval.index import SearchHit, VectorIndex
from app.vector_stores.models import VectorStore, VectorStoreFile
from app.vector_stores.service import get_active_store, mark_active

logger = logging.getLogger("opengrove.vector_stores")


async def search_stores(
    session: AsyncSession,
    index: VectorIndex,
    embedder: Embedder | None,
    project_id: str,
    vector_store_ids: Sequence[str],
    queries: Sequence[str],
    *,
    max_num_results: int = 10,
    score_threshold: float = 0.0,
    filters: dict[str, Any] | None = None,
    ranker: str = "auto",
) -> list[SearchHit]:
    """The best chunks for any of `queries` across the stores, best first, at most
    `max_num_results` (a chunk found by several queries counts once, with its best score).

    Each query is searched on its own (up to `max_num_results` hits scoring at least
    `score_threshold`); ties rank by file id, then chunk. Stores that do not exist or have
    expired are skipped; the ones searched are marked active in the caller's transaction
    (uncommitted). With an embedder (and a dense index) the search is hybrid; if embedding a
    query fails it falls back to lexical. `ranker="none"` skips the second stage: BM25 alone,
    no query embedding and no fusion (OpenAI: "set to none to disable [re-ranking], which
    can help reduce latency"). `filters` is an OpenAI ComparisonFilter / CompoundFilter
    (ValueError when malformed).
    """
    if not vector_store_ids:
        return []
    stores = (
        await session.scalars(
            select(VectorStore).where(
                VectorStore.id.in_(vector_store_ids), VectorStore.project_id == project_id
            )
        )
    ).all()
    live = [store for store in stores if not store.has_expired()]
    live_ids = [store.id for store in live]
    found: list[SearchHit] = []
    for query in queries:
        if live_ids and query.strip():
            found += await index.search(
                live_ids,
                query,
                dense_query=(
                    None if ranker == "none" else await _embed_query(index, embedder, query)
                ),
                max_num_results=max_num_results,
                score_threshold=score_threshold,
                filters=filters,
            )
    best: dict[tuple[str, int], SearchHit] = {}
    for hit in await _present(session, live_ids, found):
        key = (hit.file_id, hit.chunk_index)
        if key not in best or best[key].score < hit.score:
            best[key] = hit
    for store in live:  # a search is activity: it pushes back `expires_after`
        mark_active(store)
    ranked = sorted(best.values(), key=lambda h: (-h.score, h.file_id, h.chunk_index))
    return ranked[:max_num_results]


async def search_store(
    session: AsyncSession,
    index: VectorIndex,
    embedder: Embedder | None,
    project_id: str,
    vector_store_id: str,
    queries: list[str],
    *,
    max_num_results: int,
    score_threshold: float,
    filters: dict[str, Any] | None,
    ranker: str = "auto",
) -> list[SearchHit]:
    """`POST /vector_stores/{id}/search`: 404 / 400 for a missing / expired store; commits."""
    store = await get_active_store(session, project_id, vector_store_id)
    hits = await search_stores(
        session,
        index,
        embedder,
        project_id,
        [store.id],
        queries,
        max_num_results=max_num_results,
        score_threshold=score_threshold,
        filters=filters,
        ranker=ranker,
    )
    await session.commit()
    return hits


REWRITE_PROMPT = (
    "Rewrite the user's request as a search query for a keyword and semantic search over "
    "documents: keep the names, numbers and technical terms, drop filler words and "
    "politeness, add an obvious synonym when it helps. Answer with the query alone, on one "
    "line, no quotes."
)


async def rewrite_queries(
    router: ModelRouter, model: str | None, queries: Sequence[str], seconds: float = 30.0
) -> list[str]:
    """`rewrite_query`: each query rewritten for search by one model call (through the same
    adapter as runs). A query whose rewrite fails or comes back empty is kept as it was;
    without a model configured, queries are kept as they are."""
    if not model:
        return list(queries)
    from app.llm import adapter

    async def rewrite(query: str) -> str:
        request = adapter.ChatRequest(
            route=router.route(model),
            messages=[
                {"role": "system", "content": REWRITE_PROMPT},
                {"role": "user", "content": query},
            ],
            temperature=0.0,
            max_tokens=64,
        )
        parts: list[str] = []
        try:
            async with asyncio.timeout(seconds):
                async for event in adapter.stream_chat(
                    request, adapter.RetryPolicy(attempts=2, timeout=seconds)
                ):
                    if isinstance(event, adapter.TextDelta):
                        parts.append(event.text)
        except Exception:
            logger.warning(
                "rewriting a search query failed; searching it as written", exc_info=True
            )
            return query
        rewritten = " ".join("".join(parts).split()).strip().strip('"')
        return rewritten[:1000] or query

    return list(await asyncio.gather(*(rewrite(q) for q in queries)))


async def _embed_query(
    index: VectorIndex, embedder: Embedder | None, query: str
) -> list[float] | None:
    if embedder is None or not index.dense_dim:
        return None
    try:
        dense = await embedder.embed_query(query)
    except EmbeddingError:
        logger.warning("embedding the search query failed; searching lexically", exc_info=True)
        return None
    if len(dense) != index.dense_dim:
        logger.warning("query embedding has the wrong dimension; searching lexically")
        return None
    return dense


async def _present(
    session: AsyncSession, store_ids: list[str], hits: list[SearchHit]
) -> list[SearchHit]:
    """Drop chunks whose vector-store file is gone (deleted or cancelled mid-ingestion)."""
    if not hits:
        return []
    present = set(
        (
            await session.execute(
                select(VectorStoreFile.vector_store_id, VectorStoreFile.id).where(
                    VectorStoreFile.vector_store_id.in_(store_ids),
                    VectorStoreFile.id.in_({hit.file_id for hit in hits}),
                    VectorStoreFile.status.in_(("completed", "in_progress")),
                )
            )
        ).tuples()
    )
    return [hit for hit in hits if (hit.vector_store_id, hit.file_id) in present]
