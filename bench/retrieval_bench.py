"""Retrieval benchmark: ingestion throughput and search latency on the embedded index
(Qdrant Edge; `--backend local` measures qdrant-client's local mode, the engine before it).

    uv run python -m bench.retrieval_bench [--quick] [--budget-minutes 14]

Everything runs on 127.0.0.1 / a temp dir, in two processes:
  * the fake OpenAI upstream, standalone (`python -m tests.fake_upstream`), serving
    `/v1/embeddings` (deterministic hashed bag-of-words vectors, --embedding-dim);
  * this process: chunking (app.retrieval.chunking), embeddings through the real
    `Embedder` (litellm.aembedding, default batch 64 / concurrency 1 as the server's
    create_embedder) and `QdrantIndex` over qdrant-client local mode under a temp dir.

Corpus: deterministic pseudo-documents. The vocabulary is the first --vocab whole-word
tokens (" word", 3-12 lowercase letters) of tiktoken's o200k_base in merge-rank order,
which roughly follows frequency, so a word is one token as in English text; words are
drawn with Zipf weights (s=1.07), each document boosts 25 topic words, and about one
sentence in 25 carries a unique marker phrase. Chunked like the server's default `auto`
strategy (800 tokens, 400 overlap) unless --max-chunk-tokens / --overlap say otherwise.

Measured:
  1. Ingestion into a fresh collection, files processed one after another as in one
     ingestion worker slot (parse excluded: the text is generated): (a) lexical only,
     (b) with dense vectors from the upstream. chunks/s end to end, and wall time split
     into chunking / embedding / upsert (upsert includes BM25 encoding, timed apart).
  2. Search latency for a fixed set of --queries queries (drawn from the indexed text:
     2-4 content words, a fifth with a marker phrase), max_num_results=--k (file_search's
     default 20), one vector store, at 10k and 100k chunks (--quick: 10k only):
     lexical, and hybrid (RRF) with the query embedded first; the hybrid figure is the
     index search alone, the query embedding round trip is listed separately.
     The first pass over the queries after a size is built, flushed and optimised is
     cold (the shard's written pages let go of); --warm-passes more follow, reported as
     "warm". Peak anonymous RSS (RssAnon, sampled) is reported beside VmHWM, which also
     counts the shard's mmapped file pages.
     The collection grows with the server's index upkeep running (`maintain()` every
     UPKEEP_SECONDS: flushes, and optimises a long ingestion without waiting for a pause).
     The collection is grown 10k -> 100k by the same chunk -> embed -> upsert_chunks
     path, in large files (--scale-file-chunks) because in local mode every
     upsert_chunks first deletes the file's old chunks with a filtered scroll + delete,
     which scans the whole collection in Python: a fixed cost per file that grows with
     the collection (reported as "per-file delete scan").

Local mode is brute force in Python (a sparse dot product per stored chunk per query),
so large sizes are slow: every phase is bounded by a count and by a share of
--budget-minutes; when a bound cuts a phase short the table says so (chunk count
actually reached, queries actually run). The script exits by itself.

Hybrid at a million chunks: through the upstream, dense vectors come at ~330 chunks/s (an
hour for 1M). `--precomputed-vectors` computes the upstream's very vectors in process
(`hashed_vector`, checked against `fake_embedding` at start) and starts no upstream;
`--build-processes N` makes the scale phase's files in N worker processes (generate, chunk,
BM25 and dense vectors, as the server's ingestion workers hand it pages: chunks carrying
their BM25 vector) while this process writes them through the same `upsert_chunks`:

    ./dev python -m bench.retrieval_bench --precomputed-vectors --build-processes 2 \
        --ingest-repeats 0 --sizes 100000,1000000 --queries 100 --search-budget-s 60 \
        --search-reserve-s 420 --budget-minutes 34 --dir /tmp
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import itertools
import math
import multiprocessing
import os
import random
import re
import shutil
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# litellm's bundled model-cost map instead of a download: no traffic off 127.0.0.1.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from app.retrieval import lexical
from app.retrieval.chunking import Chunk, chunk_segments, chunk_text, get_encoding
from app.retrieval.edge_index import EdgeIndex
from app.retrieval.embeddings import Embedder, drain_litellm_logging
from app.retrieval.qdrant_index import QdrantIndex
from app.vector_stores.ingestion import UPKEEP_SECONDS
from bench.upstream import Upstream
from tests.fake_upstream import fake_embedding

STORE = "vs_bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
ZIPF_S = 1.07
TOPIC_WORDS = 25
TOPIC_RATE = 0.10
MARKER_RATE = 0.04


def cpu_seconds(pid: int | None = None) -> float:
    """User+system CPU seconds of a process (this one when pid is None)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_mb(key: str) -> int:
    """A figure of /proc/self/status (VmHWM: peak RSS; RssAnon: anonymous RSS now), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) // 1024
    return 0


class AnonPeak:
    """Peak anonymous RSS (RssAnon: heap, the engine's in-RAM structures) of this process,
    sampled every 0.2 s in a thread. VmHWM also counts file pages the shard's mmaps have
    touched, which the kernel reclaims under pressure; RssAnon it cannot (no swap here)."""

    def __init__(self) -> None:
        self.peak_mb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_mb = max(self.peak_mb, status_mb("RssAnon"))

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, status_mb("RssAnon"))


def disk_mb(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) // (1 << 20)


def open_index(args: argparse.Namespace, path: Path, dense_dim: int | None) -> Any:
    if args.backend == "local":
        return QdrantIndex(path=path, dense_dim=dense_dim)
    return EdgeIndex(path, dense_dim=dense_dim)


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


# ------------------------------------------------------------------------------ corpus


class Corpus:
    """Deterministic pseudo-documents (see the module docstring)."""

    def __init__(self, vocab_size: int, seed: int) -> None:
        encoding = get_encoding()
        word = re.compile(rb"^ [a-z]{3,12}$")
        words: list[str] = []
        for token in range(encoding.n_vocab):
            if len(words) == vocab_size:
                break
            with contextlib.suppress(KeyError):
                piece = encoding.decode_single_token_bytes(token)
                if word.match(piece):
                    words.append(piece[1:].decode())
        self.vocab = words
        self.cum_weights = list(
            itertools.accumulate(1.0 / (rank + 1) ** ZIPF_S for rank in range(len(words)))
        )
        self.seed = seed

    def document(self, number: int, n_words: int) -> str:
        rng = random.Random(self.seed * 1_000_003 + number)
        topic = rng.sample(self.vocab[100:], TOPIC_WORDS)
        sentences: list[str] = []
        count = 0
        markers = 0
        while count < n_words:
            k = rng.randint(6, 22)
            words = rng.choices(self.vocab, cum_weights=self.cum_weights, k=k)
            for i in range(k):
                if rng.random() < TOPIC_RATE:
                    words[i] = rng.choice(topic)
            if rng.random() < MARKER_RATE:
                words.insert(rng.randint(0, k), f"marker{number}q{markers}")
                markers += 1
            sentence = " ".join(words)
            sentences.append(sentence[0].upper() + sentence[1:] + ".")
            if rng.random() < 0.15:
                sentences.append("\n\n")
            count += k
        return " ".join(sentences)

    def queries(self, texts: list[str], n: int) -> list[str]:
        """n queries from the given indexed chunk texts: 2-4 content words of one sentence,
        every fifth query led by a marker phrase from the same chunk when it has one."""
        rng = random.Random(self.seed + 7)
        common = set(self.vocab[:50])
        out: list[str] = []
        for attempt in range(n * 50):
            if len(out) == n:
                break
            text = texts[rng.randrange(len(texts))]
            sentences = [s for s in re.split(r"[.\n]+", text) if len(s.split()) >= 6]
            if not sentences:
                continue
            words = [
                w.lower()
                for w in rng.choice(sentences).split()
                if w.lower() not in common and not w.startswith("marker")
            ]
            if len(words) < 2:
                continue
            query = " ".join(rng.sample(words, min(len(words), rng.randint(2, 4))))
            if attempt % 5 == 0:
                found = re.findall(r"marker\d+q\d+", text)
                if found:
                    query = f"{rng.choice(found)} {query}"
            out.append(query)
        return out


# ------------------------------------------------------------------- dense vectors


_WORD = re.compile(r"\w+")  # the fake upstream's word pattern (`tests.fake_upstream`)
# ASCII text -> its bytes with every character `\w` does not match made a space, so that
# `split()` yields `_WORD`'s words (several times faster than the regex).
_NOT_WORD = bytes(c if chr(c).isalnum() or chr(c) == "_" else 0x20 for c in range(128)) + bytes(
    range(128, 256)
)


class WordHashes(dict[bytes, int]):
    """A word (lowercase UTF-8) -> its signed component of the fake upstream's vector as one
    code, 2 * index + (1 if the sign is + else 0), from `fake_embedding`'s blake2b digest.
    The bench's corpus has a few thousand words, so each is hashed once, not per occurrence."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def __missing__(self, word: bytes) -> int:
        digest = hashlib.blake2b(word, digest_size=8).digest()
        code = self[word] = 2 * (int.from_bytes(digest[:4], "little") % self.dim) + (digest[4] & 1)
        return code


def hashed_vector(text: str, hashes: WordHashes) -> list[float]:
    """`tests.fake_upstream.fake_embedding(text, hashes.dim)`, bit for bit: a component is a
    sum of ±1s, exact in floats whatever the order, so counting them first changes nothing;
    the norm adds the components in the same order."""
    lowered = text.lower()
    if lowered.isascii():
        words = lowered.encode().translate(_NOT_WORD).split()
    else:
        words = [word.encode() for word in _WORD.findall(lowered)]
    counts = [0] * (2 * hashes.dim)
    for code in map(hashes.__getitem__, words):
        counts[code] += 1
    vec = [float(counts[i + 1] - counts[i]) for i in range(0, 2 * hashes.dim, 2)]
    norm = math.sqrt(sum(v * v for v in vec))
    if norm == 0.0:
        vec[0] = 1.0
        return vec
    return [v / norm for v in vec]


class PrecomputedEmbedder:
    """The fake upstream's vectors computed in this process, for `--precomputed-vectors`:
    `Embedder`'s interface without the HTTP round trips (~330 chunks/s through the
    upstream, so 1M chunks took an hour). Checked against `fake_embedding` when made."""

    def __init__(self, dim: int, sample: list[str]) -> None:
        self.hashes = WordHashes(dim)
        for text in [*sample, "", " ", "Ünïcode wörds_and 42 numbers"]:
            if hashed_vector(text, self.hashes) != fake_embedding(text, dim):
                raise AssertionError(f"hashed_vector differs from fake_embedding on {text!r}")

    def vectors(self, texts: list[str]) -> list[list[float]]:
        # `Embedder` sends " " for an empty text; both map to the first basis vector.
        return [hashed_vector(text, self.hashes) for text in texts]

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return self.vectors(texts)

    async def embed_query(self, text: str) -> list[float]:
        return hashed_vector(text, self.hashes)


# ------------------------------------------------------------- build worker processes


@dataclass
class Prepared:
    """One file of the corpus, chunked (with BM25 vectors when made in a worker) and with
    its dense vectors if asked; the seconds each step took."""

    number: int
    chunks: list[Chunk]
    vectors: list[list[float]] | None
    chunk_s: float
    embed_s: float


_worker: tuple[Corpus, PrecomputedEmbedder | None] | None = None


def _worker_init(vocab: int, seed: int, dim: int | None) -> None:
    global _worker
    corpus = Corpus(vocab, seed)
    sample = [corpus.document(0, 500)] if dim else []
    _worker = (corpus, PrecomputedEmbedder(dim, sample) if dim else None)


def _prepare_in_worker(
    number: int, n_words: int, dense: bool, max_tokens: int, overlap: int
) -> Prepared:
    """A file as a worker of `--build-processes` makes it: what the server's ingestion
    worker processes do (chunks carrying their BM25 vector, `page_pool.PageReader`), plus
    the document's generation and its dense vectors."""
    assert _worker is not None
    corpus, embedder = _worker
    t0 = time.perf_counter()
    bm25 = lexical.SegmentedVectors()
    chunks = [
        Chunk(c.text, c.token_count, c.index, bm25.vector(c.text, segments) or NO_TERMS)
        for c, segments in chunk_segments([corpus.document(number, n_words)], max_tokens, overlap)
    ]
    t1 = time.perf_counter()
    vectors = embedder.vectors([c.text for c in chunks]) if embedder and dense else None
    return Prepared(number, chunks, vectors, t1 - t0, time.perf_counter() - t1)


NO_TERMS = lexical.Sparse([], [])


class BuildPool:
    """`--build-processes` worker processes making the corpus's files ahead of the writes,
    so generating, chunking and vectorising (~1 ms of CPU a chunk) overlap the index
    writes (~0.3 ms) on other cores, as the server's ingestion worker processes do."""

    def __init__(self, args: argparse.Namespace, dim: int | None) -> None:
        self.args = args
        self.executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=args.build_processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(args.vocab, args.seed, dim),
        )
        self.ahead: collections.deque[concurrent.futures.Future[Prepared]] = collections.deque()

    def submit(self, number: int, n_words: int, dense: bool) -> None:
        args = self.args
        self.ahead.append(
            self.executor.submit(
                _prepare_in_worker, number, n_words, dense, args.max_chunk_tokens, args.overlap
            )
        )

    def discard(self) -> None:
        """Forget the files made ahead (a phase ended): their numbers are not reused."""
        for future in self.ahead:
            future.cancel()
        self.ahead.clear()

    def close(self) -> None:
        self.discard()
        self.executor.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------ phases


@dataclass
class Ingest:
    """Wall-time split of one ingestion run."""

    chunks: int = 0
    files: int = 0
    chunk_s: float = 0.0
    embed_s: float = 0.0
    upsert_s: float = 0.0
    bm25_s: float = 0.0  # BM25 encoding (part of upsert), measured in a separate pass
    upstream_cpu_s: float = 0.0
    complete: bool = True
    optimize_s: float = 0.0
    rss_mb: int = 0  # peak RSS of this process (VmHWM) after the build
    anon_mb: int = 0  # peak anonymous RSS during the build and its optimise
    optimize_anon_mb: int = 0  # peak anonymous RSS during the optimise alone
    disk_mb: int = 0
    wall_s: float = 0.0  # the whole build, index upkeep running beside it

    @property
    def total_s(self) -> float:
        return self.chunk_s + self.embed_s + self.upsert_s

    @property
    def rate(self) -> float:
        return self.chunks / self.total_s if self.total_s else 0.0


@dataclass
class Latency:
    size: int
    mode: str
    seconds: list[float] = field(default_factory=list)
    embed_seconds: list[float] = field(default_factory=list)
    planned: int = 0


@dataclass
class Context:
    args: argparse.Namespace
    corpus: Corpus
    upstream: Upstream | None  # None with --precomputed-vectors
    embedder: Embedder | PrecomputedEmbedder
    deadline: float
    pool: BuildPool | None = None  # with --build-processes: makes the scale phase's files
    ingest_runs: dict[str, list[Ingest]] = field(default_factory=dict)
    next_doc: Iterator[int] = field(default_factory=itertools.count)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


async def prepare_here(ctx: Context, number: int, n_words: int, dense: bool) -> Prepared:
    """A file made in this process: chunked (the index computes BM25 when writing) and
    embedded through `ctx.embedder` (the upstream's CPU counted apart)."""
    args = ctx.args
    text = ctx.corpus.document(number, n_words)
    t0 = time.perf_counter()
    chunks = chunk_text(text, args.max_chunk_tokens, args.overlap)
    t1 = time.perf_counter()
    vectors = await ctx.embedder.embed([c.text for c in chunks]) if dense else None
    return Prepared(number, chunks, vectors, t1 - t0, time.perf_counter() - t1)


async def ingest_files(
    ctx: Context,
    index: Any,
    target_chunks: int,
    words_per_file: tuple[int, int],
    dense: bool,
    stop_at: float,
    keep_texts: list[str] | None = None,
    pool: BuildPool | None = None,
) -> Ingest:
    """chunk -> (embed) -> upsert_chunks, file after file, until target_chunks are indexed
    (the last file truncated to land exactly) or the monotonic clock passes stop_at.

    With a `pool` (`--build-processes`) the files are made in its worker processes, a few
    ahead; then "chunk s" is the time this process waited for them and "embed s" stays 0."""
    result = Ingest()
    rng = random.Random(ctx.args.seed + target_chunks + dense)
    started = time.perf_counter()

    def next_file() -> tuple[int, int, bool]:
        return next(ctx.next_doc), rng.randint(*words_per_file), dense

    if pool is not None:
        while len(pool.ahead) < 2 * ctx.args.build_processes:
            pool.submit(*next_file())
    try:
        while result.chunks < target_chunks:
            if time.monotonic() > stop_at:
                result.complete = False
                break
            t0 = time.perf_counter()
            if pool is not None:
                prepared = await asyncio.wrap_future(pool.ahead.popleft())
                pool.submit(*next_file())
                result.chunk_s += time.perf_counter() - t0
            else:
                upstream_cpu = cpu_seconds(ctx.upstream.pid) if ctx.upstream and dense else 0.0
                prepared = await prepare_here(ctx, *next_file())
                if ctx.upstream and dense:
                    result.upstream_cpu_s += cpu_seconds(ctx.upstream.pid) - upstream_cpu
                result.chunk_s += prepared.chunk_s
                result.embed_s += prepared.embed_s
            room = target_chunks - result.chunks
            chunks = prepared.chunks[:room]
            vectors = prepared.vectors[:room] if prepared.vectors is not None else None
            t2 = time.perf_counter()
            written = await index.upsert_chunks(
                STORE,
                f"file_{prepared.number}",
                f"doc_{prepared.number}.txt",
                chunks,
                dense_vectors=vectors,
            )
            result.upsert_s += time.perf_counter() - t2
            result.chunks += written
            result.files += 1
            if keep_texts is not None:
                keep_texts.extend(c.text for c in chunks[:: max(1, len(chunks) // 20)])
    finally:
        if pool is not None:
            pool.discard()
    result.wall_s = time.perf_counter() - started
    return result


async def ingestion_phase(ctx: Context, root: Path, dense: bool, rep: int) -> Ingest:
    mode = "hybrid" if dense else "lexical"
    index = open_index(
        ctx.args, root / f"ingest_{mode}_{rep}", ctx.args.embedding_dim if dense else None
    )
    try:
        await index.ensure_collection()
        texts: list[str] = []
        stop_at = time.monotonic() + ctx.args.budget_minutes * 60 * 0.04
        result = await ingest_files(
            ctx, index, ctx.args.ingest_chunks, (1_500, 15_000), dense, stop_at, texts
        )
        # BM25 encoding share of upsert, timed apart on a sample of the same chunks.
        sample = texts[:300]
        t0 = time.perf_counter()
        for text in sample:
            lexical.document_vector(text)
        per_chunk = (time.perf_counter() - t0) / max(1, len(sample))
        result.bm25_s = per_chunk * result.chunks
        return result
    finally:
        await index.close()
        shutil.rmtree(root / f"ingest_{mode}_{rep}", ignore_errors=True)


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def search_phase(
    ctx: Context, index: Any, size: int, queries: list[str], budget_s: float, warm: bool
) -> list[Latency]:
    """Lexical then hybrid over the same queries. Each mode gets its share of the budget
    (hybrid costs ~2.5x lexical in local mode) and starts no query it cannot finish in
    time, judging by the slowest query so far."""
    k = ctx.args.k
    out: list[Latency] = []
    modes = (("lexical", 1.0),) if ctx.args.lexical_only else (("lexical", 0.3), ("hybrid", 1.0))
    for mode, share in modes:
        lat = Latency(size, mode, planned=len(queries))
        stop_at = time.monotonic() + (budget_s - sum(sum(x.seconds) for x in out)) * share
        if warm:  # unmeasured, so lazily built state doesn't land in the figures
            vector = await ctx.embedder.embed_query("warm up") if mode == "hybrid" else None
            await index.search([STORE], "warm up query", dense_query=vector, max_num_results=k)
        await timed_queries(ctx, index, mode, queries, lat, stop_at)
        out.append(lat)
        if ctx.args.warm_passes:  # the same queries again: the pages they read are resident
            again = Latency(size, f"{mode} warm", planned=len(queries) * ctx.args.warm_passes)
            for _ in range(ctx.args.warm_passes):
                await timed_queries(ctx, index, mode, queries, again, stop_at + budget_s * 0.1)
            out.append(again)
    return out


async def timed_queries(
    ctx: Context, index: Any, mode: str, queries: list[str], lat: Latency, stop_at: float
) -> None:
    """Each query once, timed (a hybrid query's embedding apart); none started that the
    slowest so far says would end past stop_at."""
    for query in queries:
        slowest = max(lat.seconds, default=0.0) + max(lat.embed_seconds, default=0.0)
        if time.monotonic() + slowest > stop_at:
            break
        dense = None
        if mode == "hybrid":
            t0 = time.perf_counter()
            dense = await ctx.embedder.embed_query(query)
            lat.embed_seconds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await index.search([STORE], query, dense_query=dense, max_num_results=ctx.args.k)
        lat.seconds.append(time.perf_counter() - t0)


@contextlib.asynccontextmanager
async def upkeep(index: Any) -> AsyncIterator[None]:
    """The server's index upkeep while a build runs: `maintain()` every UPKEEP_SECONDS (it
    flushes, and optimises a long ingestion without waiting for a pause). On exit, waits
    for a `maintain()` under way."""
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), UPKEEP_SECONDS)
            if not stop.is_set():
                await index.maintain()

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        stop.set()
        await task


async def delete_scan_seconds(index: Any, repeat: int = 3) -> float:
    """Median cost of upsert_chunks' first step for a new file: deleting its (absent)
    old chunks, which in local mode scans every stored point's payload."""
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        await index.delete_file(STORE, f"absent_{i}")
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass
class Scale:
    target: int
    reached: int
    build: Ingest
    delete_scan_s: float
    latencies: list[Latency]


async def scale_phase(ctx: Context, root: Path, sizes: list[int]) -> list[Scale]:
    args = ctx.args
    index = open_index(args, root / "scale", None if args.lexical_only else args.embedding_dim)
    results: list[Scale] = []
    queries: list[str] = []
    words = args.scale_file_chunks * (args.max_chunk_tokens - args.overlap) * 9 // 10
    try:
        await index.ensure_collection()
        for n, size in enumerate(sizes):
            have = sum(s.reached for s in results[-1:])
            if n == 0:  # the first size is built in full and gets its own search budget
                search_budget = min(args.search_budget_s, ctx.remaining() - 30)
                stop_at = ctx.deadline - 30
            else:  # later sizes grow while time is left, keeping a reserve for searching
                search_budget = args.search_reserve_s or max(120.0, ctx.remaining() * 0.35)
                stop_at = time.monotonic() + max(0.0, ctx.remaining() - search_budget)
            texts: list[str] = []
            with AnonPeak() as build_peak:
                async with upkeep(index):
                    build = await ingest_files(
                        ctx,
                        index,
                        size - have,
                        (words, words),
                        not args.lexical_only,
                        stop_at,
                        keep_texts=texts if not queries else None,
                        pool=ctx.pool,
                    )
            reached = have + build.chunks
            print(
                f"  built {reached:,} chunks ({build.chunks:,} added in {build.wall_s:,.0f} s, "
                f"{build.chunks / max(build.wall_s, 1e-9):,.0f}/s; load avg {load_average()})",
                flush=True,
            )
            if not queries:
                queries = ctx.corpus.queries(texts, args.queries)
            if isinstance(index, EdgeIndex):  # what maintain() does once writes pause
                t0 = time.perf_counter()
                with AnonPeak() as optimize_peak:
                    await index.flush()
                    await index.optimize()
                build.optimize_s = time.perf_counter() - t0
                build.optimize_anon_mb = optimize_peak.peak_mb
            build.anon_mb = max(build_peak.peak_mb, build.optimize_anon_mb)
            build.rss_mb = status_mb("VmHWM")
            build.disk_mb = disk_mb(root / "scale")
            print(
                f"  flush+optimise {build.optimize_s:,.1f} s; peak RSS {build.rss_mb:,} MB "
                f"(anonymous {build.anon_mb:,} MB); index on disk {build.disk_mb:,} MB",
                flush=True,
            )
            scan = await delete_scan_seconds(index)
            budget = max(10.0, min(search_budget, ctx.remaining() - 5))
            latencies = await search_phase(ctx, index, reached, queries, budget, warm=n == 0)
            for lat in latencies:
                print(
                    f"  {lat.mode} search at {reached:,}: {len(lat.seconds)} queries, "
                    f"median {ms(median(lat.seconds))} ms, p99 {ms(pct(lat.seconds, 99))} ms",
                    flush=True,
                )
            results.append(Scale(size, reached, build, scan, latencies))
            if ctx.remaining() < 150:
                break
    finally:
        await index.close()
    return results


# ------------------------------------------------------------------------------ report


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}" if seconds == seconds else "-"


def report(ctx: Context, ingests: dict[str, Ingest], scales: list[Scale], started: float) -> None:
    args = ctx.args
    print()
    print(
        f"Retrieval bench: {args.backend} index under a temp dir; chunks {args.max_chunk_tokens}"
        f"/{args.overlap} tokens; dense dim {args.embedding_dim} (fake upstream, own process,"
        f" via Embedder -> litellm, unless said below); vocab {len(ctx.corpus.vocab):,};"
        f" {os.cpu_count()} CPUs, load avg now {load_average()}"
    )
    if args.precomputed_vectors:
        print(
            "Dense vectors: --precomputed-vectors (the fake upstream's, computed in process; "
            f"the scale phase's files made in {args.build_processes} worker process(es))"
        )
    print()
    if not ingests:
        print("Ingestion runs: none (--ingest-repeats 0)")
    else:
        report_ingestion(ctx, ingests)
    if not scales:
        return
    report_scales(ctx, scales)
    print()
    print(f"Total runtime {time.monotonic() - started:,.0f} s")


def report_ingestion(ctx: Context, ingests: dict[str, Ingest]) -> None:
    args = ctx.args
    print(
        f"Ingestion into a fresh collection, files one after another (wall seconds; the "
        f"run with the median chunks/s of {args.ingest_repeats}, all: "
        + "; ".join(
            f"{mode} " + "/".join(f"{r.rate:,.0f}" for r in results)
            for mode, results in ctx.ingest_runs.items()
        )
        + "):"
    )
    header = (
        f"{'mode':<8} {'chunks':>7} {'files':>5} {'chunks/s':>9} {'chunk s':>8} "
        f"{'embed s':>8} {'upsert s':>9} {'(BM25 enc)':>10} {'upstream CPU s':>14}"
    )
    print(header)
    for mode, r in ingests.items():
        note = "" if r.complete else "  (stopped by budget)"
        print(
            f"{mode:<8} {r.chunks:>7,} {r.files:>5} {r.rate:>9,.0f} {r.chunk_s:>8.1f} "
            f"{r.embed_s:>8.1f} {r.upsert_s:>9.1f} {r.bm25_s:>10.1f} "
            f"{(f'{r.upstream_cpu_s:.1f}' if mode == 'hybrid' else '-'):>14}{note}"
        )


def report_scales(ctx: Context, scales: list[Scale]) -> None:
    args = ctx.args
    print()
    print(
        f"Search latency, {args.queries} fixed queries, max_num_results={args.k}, "
        "one vector store (ms; hybrid = index search only, its query embedding separate):"
    )
    print(
        f"{'chunks':>8} {'mode':<12} {'n':>4} {'median':>8} {'p99':>8} {'max':>8} "
        f"{'query embed median':>19}"
    )
    for scale in scales:
        for lat in scale.latencies:
            n = len(lat.seconds)
            p99 = ms(pct(lat.seconds, 99)) if n >= 20 else "(n<20)"
            embed = ms(median(lat.embed_seconds)) if lat.embed_seconds else "-"
            cut = "" if n == lat.planned else f"  (budget: {n} of {lat.planned} queries)"
            print(
                f"{scale.reached:>8,} {lat.mode:<12} {n:>4} {ms(median(lat.seconds)):>8} "
                f"{p99:>8} {ms(max(lat.seconds, default=float('nan'))):>8} {embed:>19}{cut}"
            )
    last = scales[-1]
    if last.reached < 100_000 and not args.quick:
        factor = 100_000 / last.reached
        print(
            f"{'100,000':>8} NOT MEASURED: the collection reached {last.reached:,} in the "
            f"budget. Brute force is linear in chunks, so x{factor:.1f} suggests about "
        )
        print(
            "         "
            + ", ".join(
                f"{lat.mode} {statistics.median(lat.seconds) * factor:,.0f} s"
                for lat in last.latencies
                if lat.seconds
            )
            + " per query (extrapolated, not measured)."
        )
    print()
    print("Growing the search collection (chunk -> embed -> upsert_chunks, large files):")
    for scale in scales:
        b = scale.build
        status = "" if scale.reached >= scale.target else f"  ({scale.target:,} NOT reached)"
        print(
            f"  to {scale.reached:>7,}: {b.chunks:>7,} chunks in {b.files} files in "
            f"{b.wall_s:,.0f} s wall, {b.chunks / max(b.wall_s, 1e-9):,.0f} chunks/s "
            f"(chunk {b.chunk_s:.0f} s, embed {b.embed_s:.0f} s, "
            f"upsert {b.upsert_s:.0f} s); per-file delete scan at this size "
            f"{scale.delete_scan_s * 1000:,.1f} ms; flush+optimise {b.optimize_s:.1f} s; "
            f"peak RSS {b.rss_mb:,} MB (anonymous: {b.anon_mb:,} MB, during the optimise "
            f"{b.optimize_anon_mb:,} MB); index on disk {b.disk_mb:,} MB{status}"
        )


# -------------------------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> None:
    started = time.monotonic()
    print(f"load avg at start {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="opengrove-retrieval-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        corpus = Corpus(args.vocab, args.seed)
        upstream: Upstream | None = None
        pool: BuildPool | None = None
        try:
            embedder: Embedder | PrecomputedEmbedder
            if args.precomputed_vectors:
                embedder = PrecomputedEmbedder(args.embedding_dim, [corpus.document(0, 2_000)])
            else:
                upstream = Upstream(root / "upstream.log", embedding_dim=args.embedding_dim).start()
                embedder = Embedder(
                    "openai/fake-embed", api_base=upstream.base_url, api_key="fake-key"
                )
            if args.build_processes:
                pool = BuildPool(args, None if args.lexical_only else args.embedding_dim)
            ctx = Context(
                args, corpus, upstream, embedder, started + args.budget_minutes * 60, pool
            )
            # Warm up: litellm's import (seconds) and first connection stay out of figures.
            assert len(await embedder.embed_query("warm up")) == args.embedding_dim
            ingests = await ingestion_runs(ctx, root)
            sizes = [10_000] if args.quick else [int(x) for x in args.sizes.split(",")]
            scales = await scale_phase(ctx, root, sizes)
            report(ctx, ingests, scales, started)
        finally:
            with contextlib.suppress(Exception):
                await drain_litellm_logging()
            if pool is not None:
                pool.close()
            if upstream is not None:
                upstream.stop()


async def ingestion_runs(ctx: Context, root: Path) -> dict[str, Ingest]:
    """--ingest-repeats runs of each mode, interleaved to spread the noise; for each mode
    the run with the median rate, so its split adds up to its figure."""
    runs: dict[str, list[Ingest]] = {"lexical": [], "hybrid": []}
    for rep in range(ctx.args.ingest_repeats):
        for mode, results in runs.items():
            r = await ingestion_phase(ctx, root, mode == "hybrid", rep)
            results.append(r)
            print(f"  ingestion {mode}: {r.chunks:,} chunks, {r.rate:,.0f}/s", flush=True)
    ctx.ingest_runs = runs
    return {
        mode: sorted(results, key=lambda r: r.rate)[len(results) // 2]
        for mode, results in runs.items()
        if results
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k chunks only, smaller runs")
    parser.add_argument("--budget-minutes", type=float, default=None)
    parser.add_argument("--ingest-chunks", type=int, default=1_500, help="per ingestion run")
    parser.add_argument("--ingest-repeats", type=int, default=3)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--k", type=int, default=20, help="max_num_results")
    parser.add_argument("--max-chunk-tokens", type=int, default=800)
    parser.add_argument("--overlap", type=int, default=400)
    parser.add_argument("--embedding-dim", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=5000)
    parser.add_argument("--scale-file-chunks", type=int, default=2000)
    parser.add_argument("--search-budget-s", type=float, default=None, help="at 10k chunks")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backend", choices=["edge", "local"], default="edge")
    parser.add_argument("--sizes", default="10000,100000", help="chunk counts searched")
    parser.add_argument(
        "--lexical-only", action="store_true", help="no dense vectors (for 1M: no embedding)"
    )
    parser.add_argument(
        "--warm-passes",
        type=int,
        default=1,
        help="after the first (cold) pass over the queries, this many more, reported as warm",
    )
    parser.add_argument("--dir", default=None, help="where the temp dir goes (default: TMPDIR)")
    parser.add_argument(
        "--precomputed-vectors",
        action="store_true",
        help="dense vectors computed in process (the fake upstream's, bit for bit) instead of "
        "through its /v1/embeddings: for building 1M chunks in minutes",
    )
    parser.add_argument(
        "--build-processes",
        type=int,
        default=0,
        help="worker processes making the scale phase's files (generate, chunk, BM25, dense "
        "vectors with --precomputed-vectors) while this one writes; 0: all in this process",
    )
    parser.add_argument(
        "--search-reserve-s",
        type=float,
        default=None,
        help="seconds kept for searching when growing past the first size (default: 35%% "
        "of what is left, at least 120)",
    )
    args = parser.parse_args(argv)
    if args.build_processes and not (args.precomputed_vectors or args.lexical_only):
        parser.error("--build-processes needs --precomputed-vectors (or --lexical-only)")
    if args.budget_minutes is None:
        args.budget_minutes = 10.0 if args.quick else 14.0
    if args.search_budget_s is None:
        args.search_budget_s = 420.0
    # qdrant-client warns once past 20k local points; that is the point being measured.
    warnings.filterwarnings("ignore", message="Local mode is not recommended")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
