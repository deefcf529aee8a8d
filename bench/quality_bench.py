"""Ranking quality on the labelled stdlib set: nDCG@10, recall@5 (and recall@10, MRR@10).

    ./dev python -m bench.quality_bench [--hybrid]

Indexes tests/data/retrieval/stdlib_docstrings.json (318 documents, 202 judged queries;
see its description) into a fresh index under a temp dir, one file per document, chunked
800/400 like the server's `auto` strategy, and searches each query (max_num_results 20).
A document's rank is that of its best chunk. nDCG@10 uses the graded judgements (gain 2^g
- 1); recall@k counts queries with their grade-2 document in the top k.

The index is Qdrant Edge (`EdgeIndex`) when importable, else qdrant-client's local mode
(`QdrantIndex`, the engine before Qdrant Edge): the same script measures both trees.
--hybrid adds dense vectors from a deterministic hashed bag-of-words embedding (the fake
upstream's), which tracks word overlap, not meaning: it measures the fusion plumbing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import re
import statistics
import tempfile
from pathlib import Path
from typing import Any

from app.retrieval.chunking import chunk_text

DATA = Path(__file__).resolve().parent.parent / "tests/data/retrieval/stdlib_docstrings.json"
STORE = "vs_quality"
DIM = 256


def embed(text: str) -> list[float]:
    vector = [0.0] * DIM
    for term in re.findall(r"\w+", text.lower()):
        vector[int.from_bytes(hashlib.sha256(term.encode()).digest()[:4], "big") % DIM] += 1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def open_index(path: Path, dense_dim: int | None) -> Any:
    try:
        from app.retrieval.edge_index import EdgeIndex
    except ImportError:
        from app.retrieval.qdrant_index import QdrantIndex

        return QdrantIndex(path=path, dense_dim=dense_dim)
    return EdgeIndex(path, dense_dim=dense_dim)


def ndcg(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    gains = [2 ** relevant.get(doc, 0) - 1 for doc in ranked[:k]]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted((2**g - 1 for g in relevant.values()), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


async def evaluate(path: Path, hybrid: bool, data: dict[str, Any] | None = None) -> dict[str, Any]:
    data = data or json.loads(DATA.read_text("utf-8"))
    index = open_index(path, DIM if hybrid else None)
    await index.ensure_collection()
    try:
        for doc in data["documents"]:
            chunks = chunk_text(doc["text"], 800, 400)
            vectors = [embed(c.text) for c in chunks] if hybrid else None
            await index.upsert_chunks(
                STORE, doc["id"], f"{doc['id']}.txt", chunks, dense_vectors=vectors
            )
        rows = []
        for q in data["queries"]:
            hits = await index.search(
                [STORE],
                q["query"],
                dense_query=embed(q["query"]) if hybrid else None,
                max_num_results=20,
            )
            ranked = list(dict.fromkeys(h.file_id for h in hits))
            best = max(q["relevant"], key=q["relevant"].get)
            rank = ranked.index(best) + 1 if best in ranked else None
            rows.append(
                {
                    "query": q["query"],
                    "ndcg@10": ndcg(ranked, q["relevant"], 10),
                    "recall@5": rank is not None and rank <= 5,
                    "recall@10": rank is not None and rank <= 10,
                    "mrr@10": 1 / rank if rank and rank <= 10 else 0.0,
                }
            )
    finally:
        await index.close()
    return {
        "documents": len(data["documents"]),
        "queries": len(rows),
        **{
            key: round(statistics.fmean(float(r[key]) for r in rows), 4)
            for key in ("ndcg@10", "recall@5", "recall@10", "mrr@10")
        },
        "misses@10": [r["query"] for r in rows if not r["recall@10"]],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hybrid", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(evaluate(Path(tmp) / "index", args.hybrid))
    misses = result.pop("misses@10")
    print(json.dumps(result))
    print(f"{len(misses)} queries without their document in the top 10: {misses}")


if __name__ == "__main__":
    main()
