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

Document vectors are computed here, not by the encoder's `embed_document`, and equal its
output: the encoder splits text into maximal runs of alphanumeric characters (Rust's
`char::is_alphanumeric`) and maps each run on its own (lowercase, stopword, stem, hash), so a
run's term id is remembered (`_Terms`, asked of the encoder once per distinct run), and only
counting and the weights are done per chunk (`_Weights`: the encoder's f64 formula, its fused
multiply-add done exactly, rounded to f32). Runs are cut on ASCII bytes of the UTF-8 text; a
run holding non-ASCII characters is cut further by what the encoder says of each character.
This costs about half of `embed_document` (ingestion computes one per chunk), and
`test_retrieval` checks it against the encoder. Term ids that collide inside one chunk (rare)
merge; the encoder keeps one of them.
"""

from __future__ import annotations

import functools
import threading
from array import array
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from struct import Struct
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

    def __reduce__(self) -> tuple[Any, ...]:
        # Pages of vectors cross processes: as two arrays' bytes they pickle several times
        # faster than as lists of numbers.
        return _unpickle_sparse, (
            array("I", self.indices).tobytes(),
            array("d", self.values).tobytes(),
        )


def _unpickle_sparse(indices: bytes, values: bytes) -> Sparse:
    ints, floats = array("I"), array("d")
    ints.frombytes(indices)
    floats.frombytes(values)
    return Sparse(ints.tolist(), floats.tolist())


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
    None when the text has no indexable term (only stopwords or punctuation). The encoder's
    `embed_document`, computed faster (see the module docstring)."""
    try:
        words = text.encode("utf-8").translate(_SPLIT).split()
    except UnicodeEncodeError:  # lone surrogates: the encoder says what it says of them
        return encoder_document_vector(text)
    try:
        counts = Counter(map(_TERMS.__getitem__, words))
    except _NotOneTerm:  # (never seen: a run is one term at most)
        return encoder_document_vector(text)
    return _sparse(counts, len(words) - counts.pop(None, 0))


def _sparse(counts: Counter[Any], length: int, *, runs_cut: bool = True) -> Sparse | None:
    """The BM25 vector of a text from the counts of its `_TERMS` entries (`length`: its
    term count so far). `runs_cut`: some entries may be runs cut further (tuples of terms;
    never so in ASCII text)."""
    if runs_cut:
        for key in [key for key in counts if type(key) is tuple]:
            n = counts.pop(key)
            length += n * (len(key) - 1)
            for term in key:
                counts[term] += n
    if not counts:
        return None
    indices = sorted(counts)
    weight = _weights(length)
    return Sparse(indices, list(map(weight.__getitem__, map(counts.__getitem__, indices))))


def encoder_document_vector(text: str) -> Sparse | None:
    """`document_vector` as the encoder computes it (`embed_document`)."""
    vector = _encoder().embed_document(text)  # type: ignore[attr-defined]
    if not vector.indices:
        return None
    return Sparse(list(vector.indices), list(vector.values))


# Bytes of UTF-8 text -> the same bytes with every ASCII character that is not a letter or a
# digit made a space: `split()` then yields the encoder's runs (non-ASCII bytes stay in them).
_SPLIT = bytes(c if c >= 0x80 or chr(c).isalnum() else 0x20 for c in range(256))
_F32 = Struct("f")
MAX_REMEMBERED = 100_000  # runs remembered (~12 MB); then forgotten and learnt again


class _NotOneTerm(Exception):
    pass


class _Terms(dict):  # type: ignore[type-arg]
    """A run (UTF-8 bytes) -> its term id; None for a stopword; for a run holding non-ASCII
    characters that the encoder cuts further, the tuple of its parts' ids. One per process
    (what it learns holds for every thread; each asks its own encoder)."""

    def __init__(self) -> None:
        super().__init__()
        self.alnum: dict[str, bool] = {}  # non-ASCII character -> alphanumeric for the encoder

    def __missing__(self, run: bytes) -> int | tuple[int, ...] | None:
        if len(self) >= MAX_REMEMBERED:
            self.clear()
        text = run.decode("utf-8")
        if run.isascii():
            term = self[run] = self._term(text)
            return term
        parts: list[str] = []
        start = 0
        for i, char in enumerate(text):
            if not char.isascii() and not self._alnum(char):
                if i > start:
                    parts.append(text[start:i])
                start = i + 1
        if start < len(text):
            parts.append(text[start:])
        ids = tuple(t for t in map(self._term, parts) if t is not None)
        found = self[run] = ids[0] if len(ids) == 1 else (ids or None)
        return found

    def _term(self, run: str) -> int | None:
        """The term id of one run (the encoder maps a run to one term at most)."""
        indices = _encoder().embed_query(run).indices  # type: ignore[attr-defined]
        if len(indices) > 1:
            raise _NotOneTerm(run)
        return indices[0] if indices else None

    def _alnum(self, char: str) -> bool:
        """Whether the encoder keeps `char` inside a run: "a" is a stopword, so "a?a" yields
        no term when `char` cuts it and one term when it does not."""
        known = self.alnum.get(char)
        if known is None:
            probe = _encoder().embed_query(f"a{char}a")  # type: ignore[attr-defined]
            known = self.alnum[char] = bool(probe.indices)
        return known


class _Weights(dict):  # type: ignore[type-arg]
    """Term count -> BM25 weight, for documents of one length (in terms)."""

    def __init__(self, length: int) -> None:
        super().__init__()
        # k1 * (1 - b + b * len / avg_len) + n, as one fused multiply-add in the encoder.
        self.norm = Fraction(K1) * Fraction(1.0 - B + B * length / AVG_DOC_LEN)

    def __missing__(self, n: int) -> float:
        tf = n * (K1 + 1.0)
        tf /= float(self.norm + n)
        weight = self[n] = _F32.unpack(_F32.pack(tf))[0]
        return weight


_TERMS = _Terms()
_WEIGHTS: dict[int, _Weights] = {}  # document length -> its weights


def _weights(length: int) -> _Weights:
    weights = _WEIGHTS.get(length)
    if weights is None:
        if len(_WEIGHTS) >= 10_000:
            _WEIGHTS.clear()
        weights = _WEIGHTS[length] = _Weights(length)
    return weights


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


# -- the vectors of overlapping chunks ------------------------------------------------------


@dataclass(slots=True)
class _Runs:
    """A stretch of text as `document_vector` sees it: the `_TERMS` entry of each of its
    runs, in order, and the runs at its edges, which may continue into the neighbouring
    stretch: `head` / `tail` are its first / last run when the text starts / ends inside
    one (else b""), `whole` says the text is one run. Only a run holding non-ASCII
    characters can be cut further (a tuple of terms): `ascii` says there is none."""

    terms: list[int | tuple[int, ...] | None]
    head: bytes
    tail: bytes
    whole: bool
    ascii: bool


def _runs(text: str) -> _Runs | None:
    """The runs of one stretch; None for text that has no UTF-8 form (lone surrogates: the
    encoder must see the whole chunk)."""
    try:
        translated = text.encode("utf-8").translate(_SPLIT)
    except UnicodeEncodeError:
        return None
    words = translated.split()
    head = words[0] if words and translated[0] != 0x20 else b""
    tail = words[-1] if words and translated[-1] != 0x20 else b""
    whole = len(words) == 1 and bool(head and tail)
    return _Runs(list(map(_TERMS.__getitem__, words)), head, tail, whole, translated.isascii())


def _joined(left: _Runs, right: _Runs) -> _Runs:
    """The runs of two adjacent stretches' texts joined: a run ending `left` and one
    starting `right` are one run of the joined text."""
    if not (left.tail and right.head):  # a separator between them
        return _Runs(
            left.terms + right.terms, left.head, right.tail, False, left.ascii and right.ascii
        )
    run = left.tail + right.head
    return _Runs(
        [*left.terms[:-1], _TERMS[run], *right.terms[1:]],
        run if left.whole else left.head,
        run if right.whole else right.tail,
        left.whole and right.whole,
        left.ascii and right.ascii,
    )


def _vector(runs: _Runs) -> Sparse | None:
    """`document_vector` from the `_TERMS` entries of a text's runs."""
    counts: Counter[Any] = Counter(runs.terms)
    return _sparse(counts, len(runs.terms) - counts.pop(None, 0), runs_cut=not runs.ascii)


class SegmentedVectors:
    """`document_vector` of a stream of chunks given as segments (`chunking.chunk_segments`:
    consecutive chunks share the segments they overlap on), splitting each segment into
    runs and looking their terms up once instead of once per chunk holding it (twice with
    the `auto` strategy's overlap of half a chunk). Equal to `document_vector(chunk.text)`
    (`test_retrieval` checks it)."""

    def __init__(self) -> None:
        self._previous: dict[tuple[int, int], _Runs | None] = {}

    def vector(self, text: str, segments: list[tuple[int, int, str]]) -> Sparse | None:
        """The document vector of a chunk whose text is `text`, cut into `segments`."""
        if len(segments) == 1:  # (no neighbour overlaps it)
            self._previous = {}
            return document_vector(text)
        runs: dict[tuple[int, int], _Runs | None] = {}
        for first, end, part in segments:
            key = (first, end)
            runs[key] = self._previous[key] if key in self._previous else _runs(part)
        self._previous = runs  # the next chunk starts with the last of them
        parts = [part for part in runs.values() if part is not None]
        if len(parts) < len(segments):
            return document_vector(text)
        return _vector(functools.reduce(_joined, parts))
