"""A file's chunks a page at a time, with their BM25 vectors, parsed in worker processes.

Parsing, chunking and BM25 encoding cost a few tenths of a ms of CPU per chunk (mostly
tokenising, then the BM25 vector): in the server's process they would share one core with
the event loop, the database and the index writes. So ingestion hands them to `PagePool`:
up to `processes` worker processes (spawned on first use, each a single-worker
`ProcessPoolExecutor`), a file bound to one of them for its life, since its page stream
(`PageReader`: `iter_text` into `chunking.chunk_segments`, then the BM25 vectors, each
stretch of text that consecutive chunks overlap on counted once) lives there. One round
trip per page: pages come back as `Chunk`s carrying their `sparse` vector; the server
process only writes them. The worker reads a file's next page while the server writes the
one it sent (`_read_ahead`). ASCII text is tokenised in Python (`chunking.
_ascii_token_lengths`, faster than tiktoken); other text is tokenised by tiktoken in a
thread while the piece before it is chunked and encoded (`chunking._encoded`; tiktoken
releases the GIL), so such a file keeps two cores busy.

With `processes=0` the same `PageReader` runs in a thread of the server's process.

A page that overruns the file's parse deadline raises `TimeoutError`; a worker that does
not come back from it shortly after is killed (and respawned on next use): the other
files it was reading fail with `ReaderLost`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import itertools
import logging
import multiprocessing
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.retrieval import lexical
from app.retrieval.chunking import Chunk, chunk_segments
from app.retrieval.parsing import Limits, iter_text

logger = logging.getLogger("opengrove.ingestion")

PAGE_CHUNKS = 256  # chunks parsed, encoded and written together
KILL_GRACE_SECONDS = 5.0  # a worker past a page's deadline this long is killed
GC_THRESHOLD = 50_000  # a worker's young-generation threshold (the default is 700)


class ReaderLost(RuntimeError):
    """The worker process holding a file's page stream died or was replaced."""


@dataclass(frozen=True, slots=True)
class FileToChunk:
    """A stored file, how to parse it and how to chunk it: what a page stream reads
    (picklable, it travels to the worker process)."""

    path: Path
    filename: str
    mime_type: str | None
    max_chunk_size_tokens: int
    chunk_overlap_tokens: int
    limits: Limits = field(default_factory=Limits)


class PageReader:
    """A file's chunks, PAGE_CHUNKS at a time, each with its BM25 vector (an empty vector
    for a chunk without terms). Synchronous; one `next()` at a time."""

    def __init__(self, source: FileToChunk) -> None:
        self.limits = source.limits
        self._chunks = chunk_segments(
            iter_text(source.path, source.filename, source.mime_type, source.limits),
            source.max_chunk_size_tokens,
            source.chunk_overlap_tokens,
        )
        # Chunks overlap (by half with the `auto` strategy): each stretch of text is counted
        # for BM25 once, not once per chunk holding it.
        self._vectors = lexical.SegmentedVectors()

    def next(self, deadline: float | None = None) -> list[Chunk] | None:
        self.limits.deadline = deadline
        vector = self._vectors.vector
        page = [
            Chunk(c.text, c.token_count, c.index, vector(c.text, segments) or _NO_TERMS)
            for c, segments in itertools.islice(self._chunks, PAGE_CHUNKS)
        ]
        self.ended = len(page) < PAGE_CHUNKS
        return page or None

    ended = False  # the last page was read (it held fewer than PAGE_CHUNKS chunks)


_NO_TERMS = lexical.Sparse([], [])


# -- the worker process's side (module functions: what the executor can call) ----------

_readers: dict[str, PageReader] = {}
# Each file's next page, read while the server writes the one just sent: by one thread, so
# the worker works on between the server's requests (a request finds its page read or being
# read). Its deadline is the one of the request before.
_read_ahead: dict[str, concurrent.futures.Future[list[Chunk] | None]] = {}
_reading: concurrent.futures.ThreadPoolExecutor | None = None


def _warm_up() -> None:
    """Load the tokenizer tables and the BM25 encoder before the first page needs them."""
    from app.retrieval.chunking import _token_lengths, get_encoding

    encoding = get_encoding()
    _token_lengths()
    # tiktoken keeps the Python dict it was built from only to pickle the encoding, which
    # a worker never does: 27 MB of RSS less per worker.
    encoding._mergeable_ranks = {}
    lexical.document_vector("warm up")
    # Collect garbage less often: a page allocates thousands of objects (and frees them;
    # none form cycles), so the default threshold (700) runs a young collection every few
    # dozen chunks, each traversing whatever lists are alive, such as a piece's 150k
    # tokens: ~4 % of a worker's CPU. What was loaded up to here is never collected.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


def _started() -> None:
    """The first task: makes the executor start its process (see `_plain_main`)."""


@contextlib.contextmanager
def _plain_main() -> Iterator[None]:
    """Start a worker without re-importing the server's `__main__` (spawn would import
    `app.cli` and with it the whole server, ~60 MB of RSS per worker for nothing): for
    the moment of starting it, `__main__` looks like an interactive session's."""
    main = sys.modules.get("__main__")
    saved = {name: getattr(main, name) for name in ("__spec__", "__file__") if hasattr(main, name)}
    try:
        if main is not None:
            main.__spec__ = None
            if "__file__" in saved:
                del main.__file__
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


def _next(
    key: str, source: FileToChunk | None, deadline: float | None
) -> tuple[list[Chunk] | None, bool]:
    """The next page of the file `key` (opened from `source` on its first call) and whether
    it was the last; a file's reader is forgotten once it ended or failed. One round trip
    per page, so a small file costs one; the page after it is read meanwhile."""
    global _reading
    reader = _readers.get(key)
    if reader is None:
        if source is None:
            raise ReaderLost(key)
        reader = _readers[key] = PageReader(source)
    if _reading is None:
        _reading = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pages")
    future = _read_ahead.pop(key, None) or _reading.submit(reader.next, deadline)
    try:
        page = future.result()
    except BaseException:
        _readers.pop(key, None)
        raise
    if page is None or reader.ended:
        _readers.pop(key, None)
        return page, True
    _read_ahead[key] = _reading.submit(reader.next, deadline)
    return page, False


def _close(key: str) -> None:
    _readers.pop(key, None)
    _read_ahead.pop(key, None)  # (a page being read is let go when read)


# -- the server's side --------------------------------------------------------------------


class _Worker:
    """One worker process (a single-worker executor), spawned when first needed."""

    def __init__(self) -> None:
        self.executor: concurrent.futures.ProcessPoolExecutor | None = None
        self.files = 0  # files bound to it now

    def submit(self, fn: Any, *args: Any) -> concurrent.futures.Future[Any]:
        return self.get().submit(fn, *args)

    def get(self) -> concurrent.futures.ProcessPoolExecutor:
        if self.executor is None:
            executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_warm_up,
            )
            with _plain_main():
                executor.submit(_started)  # starts the process, now
            self.executor = executor
        return self.executor

    def kill(self) -> None:
        executor, self.executor = self.executor, None
        if executor is None:
            return
        for process in list(getattr(executor, "_processes", {}).values()):
            with contextlib.suppress(Exception):
                process.kill()
        executor.shutdown(wait=False, cancel_futures=True)


class PagePool:
    """At most `processes` worker processes reading files' pages (0: threads here)."""

    def __init__(self, processes: int) -> None:
        self.processes = max(0, processes)
        self._workers = [_Worker() for _ in range(self.processes)]
        self._keys = itertools.count()

    def reader(self, source: FileToChunk) -> AsyncPageReader:
        if not self._workers:
            return AsyncPageReader(None, "", source)
        worker = min(self._workers, key=lambda w: w.files)  # the least busy one
        return AsyncPageReader(worker, f"r{next(self._keys)}", source)

    def shutdown(self) -> None:
        """Stop the worker processes (without waiting); the next file starts them again."""
        for worker in self._workers:
            executor, worker.executor = worker.executor, None
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)


class AsyncPageReader:
    """One file's pages, read in a worker process (or a thread); `close()` when done."""

    def __init__(
        self,
        worker: _Worker | None,
        key: str,
        source: FileToChunk,
    ) -> None:
        self._worker = worker
        self._key = key
        self._source = source
        self._local: PageReader | None = None
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._ended = False
        self._ahead: concurrent.futures.Future[Any] | None = None  # the next page's chunks
        if worker is not None:
            worker.files += 1

    async def next(self, deadline: float) -> list[Chunk] | None:
        """The next page, or None at the end; raises what parsing raises, `TimeoutError`
        past `deadline` (a `time.monotonic()` instant: the same clock in every process)."""
        budget = max(deadline - time.monotonic(), 0.0)
        if self._ended:
            return None
        if self._worker is None:
            if self._local is None:
                self._local = PageReader(self._source)
            reader = self._local
            return await asyncio.wait_for(asyncio.to_thread(reader.next, deadline), budget)
        worker = self._worker
        future, self._ahead = self._ahead, None
        if future is None:
            source: FileToChunk | None = None  # sent with the first page only
            if self._executor is None:
                self._executor = worker.get()
                source = self._source
            elif self._executor is not worker.executor:
                raise ReaderLost(self._key)
            future = worker.submit(_next, self._key, source, deadline)
        page, self._ended = await self._call(worker, future, deadline)
        if page is not None and not self._ended and self._executor is worker.executor:
            # Read the next page while this one is written.
            self._ahead = worker.submit(_next, self._key, None, deadline)
        return page

    async def _call(
        self, worker: _Worker, future: concurrent.futures.Future[Any], deadline: float
    ) -> Any:
        budget = max(deadline - time.monotonic(), 0.0)
        executor = worker.executor
        wrapped = asyncio.wrap_future(future)
        try:
            return await asyncio.wait_for(asyncio.shield(wrapped), budget)
        except TimeoutError:
            # The page stops itself at the deadline; a worker stuck in a parser does not.
            done, _ = await asyncio.wait({wrapped}, timeout=KILL_GRACE_SECONDS)
            if not done and worker.executor is executor:
                logger.warning("an ingestion worker process overran a parse deadline: killed")
                worker.kill()
            elif done and not wrapped.cancelled():
                wrapped.exception()  # retrieved: no "never retrieved" warning
            raise
        except concurrent.futures.BrokenExecutor as exc:
            if worker.executor is executor:
                worker.kill()
            raise ReaderLost(self._key) from exc

    def close(self) -> None:
        """Forget the file's stream (in its worker too); safe to call more than once."""
        worker, self._worker = self._worker, None
        self._local = None
        if worker is None:
            return
        worker.files -= 1
        executor, self._executor = self._executor, None
        self._ahead = None  # (the worker finishes it; `_close` below then forgets the file)
        if executor is not None and executor is worker.executor and not self._ended:
            with contextlib.suppress(RuntimeError):  # shut down meanwhile
                executor.submit(_close, self._key)
