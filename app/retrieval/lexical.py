"""BM25-style sparse vectors for Qdrant.

Documents get per-term BM25 term-frequency weights; the IDF half of BM25 is left to
Qdrant (`Modifier.IDF` on the sparse vector), which keeps document frequencies current
as points come and go. Term ids are a stable 32-bit hash of the term (Qdrant sparse
indices are u32), so no vocabulary has to be stored; rare collisions only merge terms.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from functools import lru_cache

from qdrant_client import models

# BM25 parameters. AVG_DOC_LEN is a fixed estimate (the one fastembed's Bm25 uses)
# because the true corpus average is not known at index time.
K1 = 1.2
B = 0.75
AVG_DOC_LEN = 256.0

_WORD_RE = re.compile(r"\w+")
# Scripts written without spaces: index overlapping character bigrams instead of runs.
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")

# Very common English words carry no ranking signal but would cost a probe each.
STOPWORDS = frozenset(
    "a an and are as at be but by for from has have he her his i if in into is it its me my "
    "no not of on or our she so such than that the their them then there these they this "
    "to was we were what when where which who will with you your".split()
)


def tokenize(text: str) -> list[str]:
    """Lower-cased word terms; snake_case identifiers also yield their parts."""
    terms: list[str] = []
    for word in _WORD_RE.findall(unicodedata.normalize("NFKC", text).casefold()):
        if _CJK_RE.search(word):
            terms.extend(_cjk_terms(word))
            continue
        if word in STOPWORDS:
            continue
        terms.append(_strip_plural(word))
        if "_" in word:
            terms.extend(p for p in word.split("_") if p and p not in STOPWORDS)
    return terms


def _strip_plural(word: str) -> str:
    """Harman's "S" stemmer: folds English plurals (elephants -> elephant) and nothing
    else, so recall improves without the surprises of a full stemmer."""
    if len(word) <= 3 or not word.isascii() or not word.isalpha() or not word.endswith("s"):
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if word.endswith(("us", "ss")):
        return word
    return word[:-1]


def _cjk_terms(word: str) -> list[str]:
    terms: list[str] = []
    pos = 0
    for match in _CJK_RE.finditer(word):
        if match.start() > pos:
            terms.append(word[pos : match.start()])
        run = match.group()
        terms.extend([run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)])
        pos = match.end()
    if pos < len(word):
        terms.append(word[pos:])
    return [t for t in terms if t.strip("_")]


@lru_cache(maxsize=65536)
def term_id(term: str) -> int:
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=4).digest(), "big")


def document_vector(text: str) -> models.SparseVector | None:
    """BM25 document-side weights: tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avglen))."""
    terms = tokenize(text)
    if not terms:
        return None
    counts = Counter(term_id(t) for t in terms)
    norm = K1 * (1 - B + B * len(terms) / AVG_DOC_LEN)
    indices = sorted(counts)
    values = [counts[i] * (K1 + 1) / (counts[i] + norm) for i in indices]
    return models.SparseVector(indices=indices, values=values)


def query_terms(text: str) -> list[int]:
    """Distinct term ids of a query; each is weighted 1.0 (Qdrant multiplies in IDF)."""
    return sorted({term_id(t) for t in tokenize(text)})


def query_vector(term_ids: list[int]) -> models.SparseVector:
    return models.SparseVector(indices=term_ids, values=[1.0] * len(term_ids))
