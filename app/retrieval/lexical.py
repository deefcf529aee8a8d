"""BM25 sparse vectors, computed in process, for both index backends.

One encoder (Qdrant's own `Bm25`, from qdrant-edge: Rust, English tokenizer, Snowball
stemmer and the English stopword list, k1 = 1.2, b = 0.75, avg_len = 256) turns chunk text
into BM25 document-side term-frequency weights and a query into its distinct terms (weight
1 each). The IDF half of BM25 is left to Qdrant (`Modifier.IDF` on the sparse vector), which
keeps document frequencies current as points come and go. The embedded engine (Qdrant Edge)
and a Qdrant server receive exactly these vectors, so both rank alike.

Term ids are the encoder's 32-bit token hashes (Qdrant sparse indices are u32), so no
vocabulary is stored; rare collisions only merge terms.

Vectors are returned as plain (indices, values) lists; each backend wraps them in its own
sparse-vector type.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

# BM25 parameters (the encoder's defaults, spelled out: they are part of the index format).
K1 = 1.2
B = 0.75
AVG_DOC_LEN = 256.0
LANGUAGE = "english"

_local = threading.local()


@dataclass(frozen=True, slots=True)
class Sparse:
    indices: list[int]
    values: list[float]

    def __bool__(self) -> bool:
        return bool(self.indices)


def _encoder() -> object:
    """One encoder per thread (cheap to build; avoids sharing one across threads)."""
    encoder = getattr(_local, "encoder", None)
    if encoder is None:
        import qdrant_edge

        encoder = qdrant_edge.Bm25(
            qdrant_edge.Bm25Config(k=K1, b=B, avg_len=AVG_DOC_LEN, language=LANGUAGE)
        )
        _local.encoder = encoder
    return encoder


def document_vector(text: str) -> Sparse | None:
    """BM25 document-side weights: tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len));
    None when the text has no indexable term (only stopwords or punctuation)."""
    vector = _encoder().embed_document(text)  # type: ignore[attr-defined]
    if not vector.indices:
        return None
    return Sparse(list(vector.indices), list(vector.values))


def chunk_vector(chunk: Any) -> Sparse | None:
    """A chunk's document vector: the one computed ahead (`Chunk.sparse`) if any."""
    sparse = chunk.sparse
    if sparse is None:
        return document_vector(chunk.text)
    return sparse or None


def query_vector(text: str) -> Sparse:
    """The query's distinct terms, each weighted 1.0 (Qdrant multiplies in their IDF)."""
    vector = _encoder().embed_query(text)  # type: ignore[attr-defined]
    return Sparse(list(vector.indices), [1.0] * len(vector.indices))


def query_terms(text: str) -> list[int]:
    """Distinct term ids of a query, sorted."""
    return sorted(query_vector(text).indices)


def single_term(term: int) -> Sparse:
    return Sparse([term], [1.0])
