"""Requests per key per minute by operation class, and model tokens per project per minute,
enforced across every API process through one shared counter per (bucket, minute).

The shared counter lives in the database (`rate_limit_windows`) or in Redis. Writing to it
on every request would cost more than the request itself (on SQLite a write lock each), so
a process claims allowance in blocks of about limit/50 and spends it locally; a claim is
granted only while it fits under the limit (else the remainder is granted), so the requests
admitted in a window never exceed the limit, whatever the number of processes. The slack
runs the other way: another process may hold up to one block it has not spent, so a client
may be refused up to (processes - 1) x block requests before the limit (2% per process).

Windows are fixed unix minutes, as OpenAI's headers suggest a reset at a point in time.
Tokens are charged after the fact (a run's usage), so they are a plain increment; a
runs-class request is refused once its project's tokens for the minute are spent.

A storage failure admits the request (and is logged): a limiter must not take the API down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from app.auth.keys import Caller
from app.auth.models import RateLimitWindow
from app.config import Settings
from app.db import Database
from app.errors import APIError
from app.observability.metrics import count_rate_limited

logger = logging.getLogger("opengrove.ratelimit")

WINDOW_SECONDS = 60
NOTED_TOKENS_FLUSH_SECONDS = 1.0  # how long model usage waits to be charged in one write
# Requests per key per minute. runs, assistants, files and messages: the hosted API's
# published figures; writes and reads: ours (documented in the README).
DEFAULT_LIMITS: dict[str, int | None] = {
    "runs": 100,
    "assistants": 100,
    "files": 100,
    "messages": 500,
    "writes": 500,
    "reads": 3000,
}
CLASSES = tuple(DEFAULT_LIMITS)
BLOCKS_PER_WINDOW = 50
TOKEN_REFRESH_SECONDS = 1.0  # how stale this process's view of a project's tokens may be
PRUNE_SECONDS = 60.0
REDIS_TTL_SECONDS = 120
REDIS_PREFIX = "opengrove:rl:"
LOG_EVERY_SECONDS = 60.0


# ------------------------------------------------------------------------- classification


def classify(method: str, path: str) -> str:
    """The operation class of a request: a few string comparisons, no regex."""
    if method != "POST" and method != "DELETE":
        return "reads"
    parts = path.split("/", 5)  # ['', 'v1'?, 'threads', id, 'runs', …]
    i = 2 if len(parts) > 1 and parts[1] == "v1" else 1
    top = parts[i] if len(parts) > i else ""
    if top == "assistants":
        return "assistants"
    if top == "files":
        return "files"
    if top == "threads" and len(parts) > i + 1:
        if parts[i + 1] == "runs":  # POST /threads/runs: create a thread and run it
            return "runs" if method == "POST" else "writes"
        if len(parts) > i + 2:
            sub = parts[i + 2]
            if sub == "runs":  # create, modify, cancel, submit_tool_outputs
                return "runs" if method == "POST" else "writes"
            if sub == "messages":
                return "messages"
    return "writes"


def parse_limits(text: str) -> dict[str, int | None]:
    """'runs=100,messages=500' -> {"runs": 100, "messages": 500}; 0 means unlimited."""
    limits: dict[str, int | None] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in CLASSES:
            raise ValueError(
                f"OPENGROVE_RATE_LIMIT_OVERRIDES: expected CLASS=N with CLASS one of "
                f"{', '.join(CLASSES)}; got {item.strip()!r}"
            )
        try:
            limits[name] = _limit(int(value.strip()))
        except ValueError:
            raise ValueError(
                f"OPENGROVE_RATE_LIMIT_OVERRIDES: {name} needs a whole number, got {value!r}"
            ) from None
    return limits


def _limit(value: Any) -> int | None:
    """A configured limit: a positive number, or None for unlimited (0, None, negative)."""
    if value is None or isinstance(value, bool):
        return None
    number = int(value)
    return number if number > 0 else None


def duration(seconds: float) -> str:
    """OpenAI's (Go's) duration form: '20ms', '1s', '59.2s', '6m0s'."""
    millis = max(1, math.ceil(seconds * 1000))
    if millis < 1000:
        return f"{millis}ms"
    minutes, millis = divmod(millis, 60_000)
    secs = f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


# ------------------------------------------------------------------------------ storage


class Counters(Protocol):
    """The shared counters: one number per (bucket, window), seen by every process."""

    async def claim(self, bucket: str, window: int, n: int, limit: int) -> tuple[int, int]:
        """Add up to `n` without passing `limit`: (granted, used afterwards)."""
        ...

    async def add(self, bucket: str, window: int, n: int) -> int:
        """Add `n` unconditionally; the total afterwards."""
        ...

    async def read(self, bucket: str, window: int) -> int: ...

    async def prune(self, before: int) -> None: ...

    async def close(self) -> None: ...


_T = RateLimitWindow.__table__
_ROW = (_T.c.bucket, _T.c.window)


def _where(bucket: str, window: int) -> Any:
    return (_T.c.bucket == bucket) & (_T.c.window == window)


class DatabaseCounters:
    """Counters in `rate_limit_windows`: an upsert that only adds what fits under the limit
    (INSERT … ON CONFLICT DO UPDATE … WHERE used + n <= limit RETURNING used, on SQLite
    >= 3.35 and PostgreSQL alike)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._insert = sqlite.insert if db.is_sqlite else postgresql.insert

    def _claim(
        self, conn: Connection, bucket: str, window: int, n: int, limit: int
    ) -> tuple[int, int]:
        stmt = self._insert(_T).values(bucket=bucket, window=window, used=n)
        stmt = stmt.on_conflict_do_update(
            index_elements=_ROW, set_={"used": _T.c.used + n}, where=_T.c.used + n <= limit
        ).returning(_T.c.used)
        used = conn.execute(stmt).scalar()
        if used is not None:
            return n, used
        # A full block does not fit: take what is left. The row exists (the upsert met it);
        # FOR UPDATE holds it on PostgreSQL, SQLite's BEGIN IMMEDIATE holds the database.
        used = conn.execute(select(_T.c.used).where(_where(bucket, window)).with_for_update())
        used = used.scalar_one()
        if used >= limit:
            return 0, used
        conn.execute(update(_T).where(_where(bucket, window)).values(used=limit))
        return limit - used, limit

    def _add(self, conn: Connection, bucket: str, window: int, n: int) -> int:
        stmt = self._insert(_T).values(bucket=bucket, window=window, used=n)
        stmt = stmt.on_conflict_do_update(
            index_elements=_ROW, set_={"used": _T.c.used + n}
        ).returning(_T.c.used)
        return conn.execute(stmt).scalar_one()

    @staticmethod
    def _read(conn: Connection, bucket: str, window: int) -> int:
        return conn.execute(select(_T.c.used).where(_where(bucket, window))).scalar() or 0

    @staticmethod
    def _prune(conn: Connection, before: int) -> None:
        conn.execute(delete(_T).where(_T.c.window < before))

    async def claim(self, bucket: str, window: int, n: int, limit: int) -> tuple[int, int]:
        return await self.db.transact(self._claim, bucket, window, n, limit)

    async def add(self, bucket: str, window: int, n: int) -> int:
        return await self.db.transact(self._add, bucket, window, n)

    async def read(self, bucket: str, window: int) -> int:
        return await self.db.transact(self._read, bucket, window, writes=False)

    async def prune(self, before: int) -> None:
        await self.db.transact(self._prune, before)

    async def close(self) -> None:
        return None  # the database belongs to the runtime


# Grant what fits under the limit, atomically (a script runs alone on the server).
_CLAIM_LUA = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = tonumber(ARGV[2]) - used
if grant > tonumber(ARGV[1]) then grant = tonumber(ARGV[1]) end
if grant <= 0 then return {0, used} end
used = redis.call('INCRBY', KEYS[1], grant)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {grant, used}
"""


class RedisCounters:
    """Counters in Redis: one key per (bucket, window) that expires on its own."""

    def __init__(self, url: str) -> None:
        import redis.asyncio

        self.redis = redis.asyncio.from_url(url)
        self._claim_script = self.redis.register_script(_CLAIM_LUA)

    @staticmethod
    def _key(bucket: str, window: int) -> str:
        return f"{REDIS_PREFIX}{bucket}:{window}"

    async def claim(self, bucket: str, window: int, n: int, limit: int) -> tuple[int, int]:
        granted, used = await self._claim_script(
            keys=[self._key(bucket, window)], args=[n, limit, REDIS_TTL_SECONDS]
        )
        return int(granted), int(used)

    async def add(self, bucket: str, window: int, n: int) -> int:
        key = self._key(bucket, window)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incrby(key, n)
            pipe.expire(key, REDIS_TTL_SECONDS)
            used, _ = await pipe.execute()
        return int(used)

    async def read(self, bucket: str, window: int) -> int:
        return int(await self.redis.get(self._key(bucket, window)) or 0)

    async def prune(self, before: int) -> None:
        return None  # keys expire by themselves

    async def close(self) -> None:
        await self.redis.aclose()


# ------------------------------------------------------------------------------ limiter


@dataclass(slots=True)
class Admission:
    """The limiter's answer: `error` set when refused; headers for the response either way."""

    error: APIError | None
    headers: list[tuple[bytes, bytes]]


ADMITTED = Admission(None, [])  # unlimited: no headers (never mutated)


class _Bucket:
    """This process's share of one bucket's current window."""

    __slots__ = ("allowance", "limit", "limit_header", "lock", "used", "window")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.window = -1
        self.allowance = 0  # claimed from the shared counter, not yet spent
        self.used = 0  # the shared counter as last seen (every process's claims)
        self.lock = asyncio.Lock()
        self.limit_header = str(limit).encode()


class _Tokens:
    __slots__ = ("fetched", "lock", "used", "window")

    def __init__(self) -> None:
        self.window = -1
        self.used = 0
        self.fetched = -math.inf  # time.monotonic() of the last read of the shared counter
        self.lock = asyncio.Lock()

    def stale(self, window: int) -> bool:
        return self.window != window or time.monotonic() - self.fetched > TOKEN_REFRESH_SECONDS


@dataclass(frozen=True, slots=True)
class _Limits:
    requests: dict[str, int | None]
    tokens: int | None


class RateLimiter:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.enabled = settings.rate_limits_enabled
        self.defaults = _Limits(
            {**DEFAULT_LIMITS, **parse_limits(settings.rate_limit_overrides)},
            _limit(settings.tokens_per_minute),
        )
        self.counters: Counters = (
            RedisCounters(settings.redis_url) if settings.redis_url else DatabaseCounters(db)
        )
        self._buckets: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Tokens] = {}
        # project id -> (the project's rate_limits dict it was built from, limits)
        self._project_limits: dict[str, tuple[Any, _Limits | None]] = {}
        self._last_prune = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()
        self._noted: dict[str, int] = {}  # tokens not yet charged, by project
        self._flushing: asyncio.Task[None] | None = None
        self._last_failure_log = -math.inf

    # -- configuration

    def limits_for(self, caller: Caller) -> _Limits | None:
        """The caller's limits: the server's, overridden by its project's; None if off."""
        overrides = caller.settings.get("rate_limits") if caller.settings else None
        if not overrides:
            return self.defaults if self.enabled else None
        cached = self._project_limits.get(caller.project_id)
        if cached is not None and cached[0] is overrides:
            return cached[1]
        limits = self._merge(overrides)
        self._project_limits[caller.project_id] = (overrides, limits)
        return limits

    def _merge(self, overrides: dict[str, Any]) -> _Limits | None:
        enabled = overrides.get("enabled", self.enabled)
        if not enabled:
            return None
        requests = dict(self.defaults.requests)
        tokens = self.defaults.tokens
        for name, value in overrides.items():
            if name not in CLASSES and name != "tokens":
                continue  # "enabled", or a class a newer version knows
            try:
                limit = _limit(value)
            except (TypeError, ValueError):
                # Set by hand in the database; the CLI checks. Keep the server's figure.
                logger.warning("project rate limit %s=%r is not a number; ignored", name, value)
                continue
            if name == "tokens":
                tokens = limit
            else:
                requests[name] = limit
        return _Limits(requests, tokens)

    # -- admission

    async def admit(self, caller: Caller, method: str, path: str) -> Admission:
        limits = self.limits_for(caller)
        if limits is None:
            return ADMITTED
        operation = classify(method, path)
        headers: list[tuple[bytes, bytes]] = []
        if operation == "runs" and limits.tokens is not None:
            refusal = await self._check_tokens(caller, limits.tokens, headers)
            if refusal is not None:
                return refusal
        limit = limits.requests.get(operation)
        if limit is None:
            return Admission(None, headers) if headers else ADMITTED
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        bucket_name = f"r:{caller.key_id}:{operation}"
        bucket = self._buckets.get(bucket_name)
        if bucket is None or bucket.limit != limit:
            bucket = self._buckets[bucket_name] = _Bucket(limit)
        if bucket.window < window:  # windows only move forward (no await since `now`)
            bucket.window, bucket.allowance, bucket.used = window, 0, 0
        if bucket.allowance == 0 and not await self._refill(bucket, bucket_name, window):
            # The shared counter could not be reached: admit (logged) rather than fail.
            return Admission(None, headers) if headers else ADMITTED
        reset = WINDOW_SECONDS - now % WINDOW_SECONDS
        reset_header = duration(reset).encode()
        if bucket.allowance == 0:
            count_rate_limited(operation)
            headers += [
                (b"x-ratelimit-limit-requests", bucket.limit_header),
                (b"x-ratelimit-remaining-requests", b"0"),
                (b"x-ratelimit-reset-requests", reset_header),
                (b"retry-after", str(max(1, math.ceil(reset))).encode()),
            ]
            message = (
                f"Rate limit reached for requests on {operation} for key {caller.key_id} "
                f"(project {caller.project_name}): Limit {limit}, Used {bucket.used}, "
                f"Requested 1. Please try again in {duration(reset)}."
            )
            error = APIError(429, message, type="requests", code="rate_limit_exceeded")
            return Admission(error, headers)
        bucket.allowance -= 1
        remaining = max(0, limit - bucket.used + bucket.allowance)
        headers += [
            (b"x-ratelimit-limit-requests", bucket.limit_header),
            (b"x-ratelimit-remaining-requests", str(remaining).encode()),
            (b"x-ratelimit-reset-requests", reset_header),
        ]
        return Admission(None, headers)

    async def _refill(self, bucket: _Bucket, name: str, window: int) -> bool:
        """Claim the next block for this window, one claim per bucket at a time: requests
        arriving meanwhile wait for it and share it. False if the counter is unreachable."""
        limit = bucket.limit
        async with bucket.lock:
            if bucket.window != window or bucket.allowance > 0 or bucket.used >= limit:
                # The window turned while we waited (the caller spends the new one's), a
                # claim was made meanwhile, or nothing is left in this window.
                return True
            block = min(max(1, limit // BLOCKS_PER_WINDOW), limit - bucket.used)
            try:
                granted, used = await self.counters.claim(name, window, block, limit)
            except Exception:
                self._log_failure("claiming rate-limit allowance")
                return False
            if bucket.window == window:
                bucket.allowance += granted
                bucket.used = max(bucket.used, used)
        self._maybe_prune()
        return True

    async def _check_tokens(
        self, caller: Caller, limit: int, headers: list[tuple[bytes, bytes]]
    ) -> Admission | None:
        """Refuse a runs-class request once the project's tokens for this minute are spent
        (as seen at most TOKEN_REFRESH_SECONDS ago; charges made here are seen at once)."""
        state = self._tokens.get(caller.project_id)
        if state is None:
            state = self._tokens[caller.project_id] = _Tokens()
        window = int(time.time() // WINDOW_SECONDS)
        if state.stale(window):
            async with state.lock:
                if state.stale(window):
                    try:
                        used = await self.counters.read(_token_bucket(caller.project_id), window)
                    except Exception:
                        self._log_failure("reading token usage")
                        return None
                    if state.window < window:
                        state.window, state.used = window, 0
                    state.used = max(state.used, used)
                    state.fetched = time.monotonic()
        now = time.time()
        reset = WINDOW_SECONDS - now % WINDOW_SECONDS
        reset_header = duration(reset).encode()
        headers += [
            (b"x-ratelimit-limit-tokens", str(limit).encode()),
            (b"x-ratelimit-remaining-tokens", str(max(0, limit - state.used)).encode()),
            (b"x-ratelimit-reset-tokens", reset_header),
        ]
        if state.used < limit:
            return None
        count_rate_limited("tokens")
        headers.append((b"retry-after", str(max(1, math.ceil(reset))).encode()))
        message = (
            f"Rate limit reached for tokens on runs for project {caller.project_name}: "
            f"Limit {limit}, Used {state.used}. Please try again in {duration(reset)}."
        )
        return Admission(APIError(429, message, type="tokens", code="rate_limit_exceeded"), headers)

    # -- tokens

    async def charge_tokens(self, project: str | Caller, tokens: int) -> None:
        """Count a run's model tokens against its project's minute (after the fact: usage
        is known once the model answered). Never raises: a lost charge is only logged."""
        if not self.enabled or tokens <= 0:
            return
        project_id = project.project_id if isinstance(project, Caller) else project
        window = int(time.time() // WINDOW_SECONDS)
        try:
            used = await self.counters.add(_token_bucket(project_id), window, tokens)
        except Exception:
            self._log_failure("charging tokens")
            return
        state = self._tokens.get(project_id)
        if state is not None and state.window <= window:
            if state.window != window:
                state.window, state.used, state.fetched = window, 0, -math.inf
            state.used = max(state.used, used)

    def note_tokens(self, project_id: str, tokens: int) -> None:
        """Count a model turn's tokens for the project, off the run's hot path: summed in
        memory and charged (one write per project) within a second."""
        if not self.enabled or tokens <= 0:
            return
        self._noted[project_id] = self._noted.get(project_id, 0) + tokens
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_noted(), name="charge-tokens")

    async def _flush_noted(self) -> None:
        await asyncio.sleep(NOTED_TOKENS_FLUSH_SECONDS)
        noted, self._noted = self._noted, {}
        for project_id, tokens in noted.items():
            await self.charge_tokens(project_id, tokens)

    # -- housekeeping

    def _maybe_prune(self) -> None:
        """At most once a minute per process: drop windows older than two minutes, shared
        and local (keys and projects come and go)."""
        if time.monotonic() - self._last_prune < PRUNE_SECONDS:
            return
        self._last_prune = time.monotonic()
        task = asyncio.create_task(self.prune(), name="rate-limit-prune")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def prune(self) -> None:
        """Forget windows older than two minutes (this process's and the shared ones)."""
        current = int(time.time() // WINDOW_SECONDS)
        for name, bucket in list(self._buckets.items()):
            if bucket.window < current - 1 and not bucket.lock.locked():
                del self._buckets[name]
        for project_id, state in list(self._tokens.items()):
            if state.window < current - 1 and not state.lock.locked():
                del self._tokens[project_id]
        self._project_limits.clear()
        try:
            await self.counters.prune(current - 2)
        except Exception:
            self._log_failure("pruning rate-limit windows")

    def _log_failure(self, doing: str) -> None:
        if time.monotonic() - self._last_failure_log >= LOG_EVERY_SECONDS:
            self._last_failure_log = time.monotonic()
            logger.exception("rate limits: %s failed; admitting requests meanwhile", doing)

    async def close(self) -> None:
        if self._flushing is not None and not self._flushing.done():
            self._flushing.cancel()
        noted, self._noted = self._noted, {}
        for project_id, tokens in noted.items():  # what a stopping server still owes
            await self.charge_tokens(project_id, tokens)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.counters.close()


def _token_bucket(project_id: str) -> str:
    return f"t:{project_id}"
