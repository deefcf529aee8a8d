"""Rate limits per key by operation class, and tokens per project, on real servers.

Each test has its own database: once one key exists, every request on it needs a key.
Windows are fixed unix minutes, so a test that must stay inside one window first waits
out the end of a minute when too little of it is left (`fresh_window`).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from sqlalchemy import select, update

from app.auth.keys import Caller, create_key
from app.auth.models import Project, RateLimitWindow
from app.auth.ratelimit import RateLimiter, classify, duration
from app.config import Settings
from app.db import Database
from app.migrate import upgrade_database
from tests.conftest import server_env
from tests.databases import fresh_database
from tests.fake_upstream import FakeUpstream
from tests.server_process import ServerProcess
from tests.spec_check import validating_http_client

REDIS_URL = os.environ.get("OPENGROVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# OpenAI's duration form, as we write it: "20ms", "59.2s", "1m0s".
DURATION = re.compile(r"^(?:\d+ms|(?:\d+m)?\d+(?:\.\d{1,3})?s)$")


def seconds(text: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(\d+(?:\.\d+)?)(ms|s)", text)
    assert match, text
    minutes, value, unit = match.groups()
    return int(minutes or 0) * 60 + float(value) / (1000 if unit == "ms" else 1)


def fresh_window(needed: float) -> None:
    """Sleep into the next minute if less than `needed` seconds are left of this one."""
    left = 60 - time.time() % 60
    if left < needed:
        time.sleep(left + 0.05)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _prepare(url: str, projects: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Migrate, issue one key per project (with its settings): name -> (key, project id)."""
    await upgrade_database(url)
    db = Database(url)
    keys = {}
    try:
        async with db.sessionmaker() as session:
            for name, settings in projects.items():
                row, key = await create_key(session, name)
                keys[name] = (key, row.project_id)
                if settings:
                    project = update(Project).where(Project.id == row.project_id)
                    await session.execute(project.values(settings=settings))
            await session.commit()
    finally:
        await db.dispose()
    return keys


@contextmanager
def servers(
    tmp: Path,
    upstream: FakeUpstream,
    env: dict[str, str],
    projects: dict[str, dict[str, Any]],
    count: int = 1,
) -> Iterator[tuple[list[ServerProcess], dict[str, tuple[str, str]], str]]:
    """`count` API processes on one fresh database with keys for `projects`."""
    with fresh_database(tmp) as url:
        keys = run(_prepare(url, projects))
        procs = []
        try:
            for i in range(count):
                data_dir = tmp / f"server-{i}"
                proc_env = {
                    **server_env(url, upstream, data_dir),
                    "OPENGROVE_PRELOAD_LLM": "false",
                    **env,
                }
                procs.append(ServerProcess(data_dir, env=proc_env).start())
            yield procs, keys, url
        finally:
            for proc in procs:
                proc.stop()


def sdk(server: ServerProcess, key: str, http_client: httpx.Client) -> openai.OpenAI:
    # No retries: the SDK would wait out retry-after (up to a minute) and try again.
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key=key, http_client=http_client, max_retries=0
    )


def request_headers_ok(headers: httpx.Headers, limit: int, remaining: int) -> float:
    assert headers["x-ratelimit-limit-requests"] == str(limit)
    assert headers["x-ratelimit-remaining-requests"] == str(remaining)
    reset = headers["x-ratelimit-reset-requests"]
    assert DURATION.match(reset), reset
    assert 0 < seconds(reset) <= 60
    return seconds(reset)


def test_classes_and_durations() -> None:
    cases = {
        ("POST", "/v1/threads/runs"): "runs",
        ("POST", "/threads/thread_1/runs"): "runs",
        ("POST", "/v1/threads/thread_1/runs/run_1"): "runs",
        ("POST", "/v1/threads/thread_1/runs/run_1/cancel"): "runs",
        ("POST", "/threads/thread_1/runs/run_1/submit_tool_outputs"): "runs",
        ("GET", "/v1/threads/thread_1/runs/run_1"): "reads",
        ("POST", "/v1/assistants"): "assistants",
        ("DELETE", "/assistants/asst_1"): "assistants",
        ("POST", "/v1/files"): "files",
        ("DELETE", "/v1/files/file_1"): "files",
        ("GET", "/v1/files/file_1/content"): "reads",
        ("POST", "/v1/threads/thread_1/messages"): "messages",
        ("DELETE", "/threads/thread_1/messages/msg_1"): "messages",
        ("POST", "/v1/threads"): "writes",
        ("DELETE", "/v1/threads/thread_1"): "writes",
        ("POST", "/v1/vector_stores/vs_1/file_batches"): "writes",
        ("GET", "/v1/models"): "reads",
    }
    assert {case: classify(*case) for case in cases} == cases
    assert [duration(s) for s in (0.02, 1, 59.2, 360, 61.5)] == [
        "20ms",
        "1s",
        "59.2s",
        "6m0s",
        "1m1.5s",
    ]


def test_sdk_gets_429_after_the_limit_with_headers(tmp_path: Path, upstream: FakeUpstream) -> None:
    env = {"OPENGROVE_RATE_LIMIT_OVERRIDES": "assistants=5", "OPENGROVE_TOKENS_PER_MINUTE": "777"}
    with (
        servers(tmp_path, upstream, env, {"alpha": {}}) as (procs, keys, _),
        validating_http_client() as http_client,
    ):
        client = sdk(procs[0], keys["alpha"][0], http_client)
        fresh_window(10)
        resets = []
        for i in range(5):
            raw = client.beta.assistants.with_raw_response.create(model="gpt-4o", name=f"a{i}")
            resets.append(request_headers_ok(raw.headers, 5, 4 - i))
            assert "retry-after" not in raw.headers
            assert "x-ratelimit-limit-tokens" not in raw.headers  # tokens: runs class only
        assert resets == sorted(resets, reverse=True)  # counting down to the window's end

        with pytest.raises(openai.RateLimitError) as refused:
            client.beta.assistants.create(model="gpt-4o")
        response = refused.value.response
        assert response.status_code == 429
        reset = request_headers_ok(response.headers, 5, 0)
        assert int(response.headers["retry-after"]) == max(1, math.ceil(reset))
        key_id = re.search(r"for key (key_\w+)", refused.value.message)
        assert key_id, refused.value.message
        assert response.json() == {
            "error": {
                "message": f"Rate limit reached for requests on assistants for key "
                f"{key_id.group(1)} (project alpha): Limit 5, Used 5, Requested 1. "
                f"Please try again in {response.headers['x-ratelimit-reset-requests']}.",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
        assert refused.value.code == "rate_limit_exceeded"

        # Other classes keep their own budgets: reads (3000), writes (500), runs (100 + tokens).
        listed = client.beta.assistants.with_raw_response.list()
        request_headers_ok(listed.headers, 3000, 2999)
        assert len(listed.parse().data) == 5  # the refused create left nothing behind
        thread = client.beta.threads.with_raw_response.create()
        request_headers_ok(thread.headers, 500, 499)
        with pytest.raises(openai.NotFoundError) as missing:
            client.beta.threads.runs.create(thread_id=thread.parse().id, assistant_id="asst_no")
        headers = missing.value.response.headers
        request_headers_ok(headers, 100, 99)
        assert headers["x-ratelimit-limit-tokens"] == "777"
        assert headers["x-ratelimit-remaining-tokens"] == "777"
        assert DURATION.match(headers["x-ratelimit-reset-tokens"])

        # A request without a key is refused by auth (401) before any limit is counted.
        anonymous = httpx.post(f"{procs[0].base_url}/v1/assistants", json={"model": "gpt-4o"})
        assert anonymous.status_code == 401
        assert "x-ratelimit-limit-requests" not in anonymous.headers


def _hammer(
    base_urls: list[str], key: str, path: str, body: dict[str, Any], total: int
) -> dict[str, list[httpx.Response]]:
    """`total` concurrent POSTs spread over the servers: responses by server."""

    async def go() -> dict[str, list[httpx.Response]]:
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(headers=headers, timeout=60) as client:
            gate = asyncio.Semaphore(32)

            async def one(i: int) -> tuple[str, httpx.Response]:
                base = base_urls[i % len(base_urls)]
                async with gate:
                    return base, await client.post(f"{base}/v1{path}", json=body)

            results = await asyncio.gather(*(one(i) for i in range(total)))
        by_server: dict[str, list[httpx.Response]] = {base: [] for base in base_urls}
        for base, response in results:
            by_server[base].append(response)
        return by_server

    return run(go())


def _check_shared_limit(by_server: dict[str, list[httpx.Response]], limit: int) -> None:
    for responses in by_server.values():
        statuses = {r.status_code for r in responses}
        assert statuses == {200, 429}, statuses  # each process admitted and refused some
        for r in responses:
            assert r.headers["x-ratelimit-limit-requests"] == str(limit)
            if r.status_code == 429:
                assert r.headers["x-ratelimit-remaining-requests"] == "0"
                assert r.json()["error"]["code"] == "rate_limit_exceeded"
    admitted = sum(r.status_code == 200 for rs in by_server.values() for r in rs)
    # Never above the limit; and once every process has refused, no allowance is left
    # unspent anywhere (a process refuses only with none of its own and none shared left).
    assert admitted == limit


def _thread(base_url: str, key: str) -> str:
    response = httpx.post(
        f"{base_url}/v1/threads", json={}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_limit_holds_across_two_processes(tmp_path: Path, upstream: FakeUpstream) -> None:
    """Two API processes on one database (PostgreSQL, or one SQLite file): the requests
    admitted in a window, together, are exactly the limit."""
    limit = 230  # blocks of 4, and a remainder of 2 at the end: both claim paths
    env = {"OPENGROVE_RATE_LIMIT_OVERRIDES": f"messages={limit}"}
    with servers(tmp_path, upstream, env, {"alpha": {}}, count=2) as (procs, keys, url):
        key, _ = keys["alpha"]
        thread_id = _thread(procs[0].base_url, key)
        fresh_window(15)
        by_server = _hammer(
            [p.base_url for p in procs],
            key,
            f"/threads/{thread_id}/messages",
            {"role": "user", "content": "hi"},
            total=400,
        )
        _check_shared_limit(by_server, limit)
        listed = httpx.get(
            f"{procs[1].base_url}/v1/threads/{thread_id}/messages",
            params={"limit": 100},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert listed.status_code == 200
        assert listed.json()["has_more"]  # the messages were made (more than a page)

        async def shared_counter() -> list[tuple[str, int]]:
            db = Database(url)
            try:
                async with db.sessionmaker() as session:
                    rows = await session.execute(
                        select(RateLimitWindow.bucket, RateLimitWindow.used)
                    )
                    return [(bucket, used) for bucket, used in rows.tuples()]
            finally:
                await db.dispose()

        counters = dict(run(shared_counter()))
        messages = [used for bucket, used in counters.items() if bucket.endswith(":messages")]
        assert messages == [limit]


def test_redis_counters_hold_across_two_processes(tmp_path: Path, upstream: FakeUpstream) -> None:
    store = redis.Redis.from_url(REDIS_URL)
    try:
        store.ping()
    except redis.RedisError as exc:
        raise RuntimeError(
            f"Redis at {REDIS_URL} is unreachable ({exc!r}); set OPENGROVE_TEST_REDIS_URL."
        ) from exc
    limit = 150
    env = {"OPENGROVE_RATE_LIMIT_OVERRIDES": f"writes={limit}", "OPENGROVE_REDIS_URL": REDIS_URL}
    with servers(tmp_path, upstream, env, {"alpha": {}}, count=2) as (procs, keys, url):
        key, _ = keys["alpha"]
        fresh_window(15)
        by_server = _hammer([p.base_url for p in procs], key, "/threads", {}, total=260)
        _check_shared_limit(by_server, limit)
        refusal = next(r for rs in by_server.values() for r in rs if r.status_code == 429)
        key_id = re.search(r"for key (key_\w+)", refusal.json()["error"]["message"])
        assert key_id
        names = list(store.scan_iter(match=f"opengrove:rl:r:{key_id.group(1)}:writes:*"))
        assert [int(store.get(name) or 0) for name in names] == [limit]
        assert 0 < store.ttl(names[0]) <= 120  # expires on its own: nothing to prune

        async def database_rows() -> int:
            db = Database(url)
            try:
                async with db.sessionmaker() as session:
                    return len((await session.scalars(select(RateLimitWindow.bucket))).all())
            finally:
                await db.dispose()

        assert run(database_rows()) == 0  # with Redis, the database is not written
    store.close()


def test_project_settings_override_and_disable(tmp_path: Path, upstream: FakeUpstream) -> None:
    projects = {
        "plain": {},
        "strict": {"rate_limits": {"assistants": 2}},
        "unlimited_assistants": {"rate_limits": {"assistants": None}},
        "off": {"rate_limits": {"enabled": False}},
    }
    env = {"OPENGROVE_RATE_LIMIT_OVERRIDES": "assistants=4"}
    with servers(tmp_path, upstream, env, projects) as (procs, keys, _):
        fresh_window(10)
        outcomes = {}
        for name, (key, _) in keys.items():
            headers = {"Authorization": f"Bearer {key}"}
            responses = [
                httpx.post(
                    f"{procs[0].base_url}/v1/assistants", json={"model": "gpt-4o"}, headers=headers
                )
                for _ in range(6)
            ]
            outcomes[name] = [r.status_code for r in responses]
            if name in ("off", "unlimited_assistants"):
                assert not any("x-ratelimit-limit-requests" in r.headers for r in responses)
        assert outcomes == {
            "plain": [200] * 4 + [429] * 2,
            "strict": [200] * 2 + [429] * 4,
            "unlimited_assistants": [200] * 6,
            "off": [200] * 6,
        }


def test_disabled_limits_admit_everything(tmp_path: Path, upstream: FakeUpstream) -> None:
    env = {"OPENGROVE_RATE_LIMITS": "false", "OPENGROVE_RATE_LIMIT_OVERRIDES": "assistants=1"}
    with servers(tmp_path, upstream, env, {"alpha": {"rate_limits": {"assistants": 1}}}) as (
        procs,
        keys,
        _,
    ):
        headers = {"Authorization": f"Bearer {keys['alpha'][0]}"}
        for _ in range(5):
            response = httpx.post(
                f"{procs[0].base_url}/v1/assistants", json={"model": "gpt-4o"}, headers=headers
            )
            assert response.status_code == 200
            assert not any(name.startswith("x-ratelimit") for name in response.headers)


def test_spent_tokens_refuse_runs(tmp_path: Path, upstream: FakeUpstream) -> None:
    """Tokens charged by another process (here: this test's own limiter on the same
    database) refuse the project's runs-class requests, and only those."""
    env = {"OPENGROVE_TOKENS_PER_MINUTE": "1000"}
    with servers(tmp_path, upstream, env, {"alpha": {}, "beta": {}}) as (procs, keys, url):
        fresh_window(10)
        base = f"{procs[0].base_url}/v1"

        def runs_request(name: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {keys[name][0]}"}
            thread = httpx.post(f"{base}/threads", json={}, headers=headers).json()["id"]
            return httpx.post(
                f"{base}/threads/{thread}/runs", json={"assistant_id": "asst_x"}, headers=headers
            )

        before = runs_request("alpha")
        assert before.status_code == 404  # admitted (no such assistant)
        assert before.headers["x-ratelimit-remaining-tokens"] == "1000"

        async def charge() -> None:
            db = Database(url)
            limiter = RateLimiter(db, Settings(tokens_per_minute=1000))
            try:
                await limiter.charge_tokens(keys["alpha"][1], 600)
                await limiter.charge_tokens(keys["alpha"][1], 600)
            finally:
                await limiter.close()
                await db.dispose()

        run(charge())
        time.sleep(1.2)  # a process reads other processes' charges at most once a second
        refused = runs_request("alpha")
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
        assert "Limit 1000, Used 1200" in error["message"]
        assert refused.headers["x-ratelimit-limit-tokens"] == "1000"
        assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
        assert int(refused.headers["retry-after"]) >= 1
        assert runs_request("beta").status_code == 404  # another project is unaffected


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    with fresh_database(tmp_path) as url:
        run(upgrade_database(url))
        yield url


def test_concurrent_requests_share_one_claim_and_old_windows_go(database: str) -> None:
    """In one process, requests that find no allowance wait for the claim in flight and
    share it, instead of each claiming a block; windows older than two minutes are pruned."""

    async def go() -> tuple[int, list[tuple[str, int, int]]]:
        db = Database(database)
        limiter = RateLimiter(db, Settings(rate_limit_overrides="reads=3000"))
        caller = Caller("proj_x", "x", "key_shared", {})
        try:
            fresh_window(5)
            admissions = await asyncio.gather(
                *(limiter.admit(caller, "GET", "/v1/assistants") for _ in range(100))
            )
            admitted = sum(a.error is None for a in admissions)
            remaining = sorted(
                int(dict(a.headers)[b"x-ratelimit-remaining-requests"]) for a in admissions
            )
            assert remaining == list(range(2900, 3000))  # one process: exact
            window = int(time.time() // 60)
            await limiter.counters.add("r:key_old:reads", window - 3, 7)
            await limiter.counters.add("r:key_recent:reads", window - 2, 7)
            await limiter.prune()
            async with db.sessionmaker() as session:
                rows = await session.execute(
                    select(RateLimitWindow.bucket, RateLimitWindow.window, RateLimitWindow.used)
                )
                return admitted, sorted(tuple(row) for row in rows)
        finally:
            await limiter.close()
            await db.dispose()

    admitted, rows = run(go())
    assert admitted == 100
    window = int(time.time() // 60)
    # Blocks of 3000/50 = 60: two claims for 100 requests (not 100 claims of 60).
    assert ("r:key_shared:reads", window, 120) in rows
    assert [row[0] for row in rows] == ["r:key_recent:reads", "r:key_shared:reads"]
