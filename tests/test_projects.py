"""Keys and projects on a server that has keys: 401s, and every route scoped to the project.

The route table test walks every route the app registers: with another project's key each
object is a 404 (the same body a missing id gets), each list is empty of foreign objects,
and each id inside a body is checked. A route added without a row here fails the test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.routing import APIRoute

from app.auth.ratelimit import WINDOW_SECONDS
from app.config import Settings
from app.main import create_app
from tests.conftest import server_env
from tests.databases import fresh_database
from tests.fake_upstream import FakeReply, FakeUpstream
from tests.server_process import ServerProcess
from tests.spec_check import check_response, validating_http_client
from tests.test_sdk_versions import SDK_VERSIONS, node_script, run_python_flows


def opengrove(env: dict[str, str], data_dir: Path, *args: str) -> str:
    """Run the CLI as an operator would; its standard output."""
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args, "--data-dir", str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


@dataclass
class IssuedKey:
    key: str
    key_id: str
    project_id: str


def issue_key(env: dict[str, str], data_dir: Path, project: str) -> IssuedKey:
    out = opengrove(env, data_dir, "keys", "create", "--project", project)
    created = re.search(r"Created (key_\w+) for project \S+ \((proj_\w+)\)", out)
    assert created, out
    return IssuedKey(out.strip().splitlines()[-1], created.group(1), created.group(2))


@dataclass
class KeyedServer:
    server: ServerProcess
    env: dict[str, str]
    alpha: IssuedKey
    beta: IssuedKey
    revoked: IssuedKey

    def client(self, key: str, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.server.base_url}/v1", api_key=key, max_retries=0, **kwargs
        )

    def set_project(self, project: str, *flags: str) -> None:
        opengrove(self.env, self.server.data_dir, "projects", "set", project, *flags)
        time.sleep(0.3)  # servers remember a key's project settings for the key cache's 0.2 s


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream
) -> Iterator[KeyedServer]:
    # Its own database: once one key exists, every request to that database needs one.
    with fresh_database(tmp_path_factory.mktemp("keyed-db")) as url:
        data_dir = tmp_path_factory.mktemp("keyed")
        env = {
            **os.environ,
            **server_env(url, fake_upstream, data_dir),
            "OPENGROVE_KEY_CACHE_SECONDS": "0.2",
        }
        alpha = issue_key(env, data_dir, "alpha")
        beta = issue_key(env, data_dir, "beta")
        revoked = issue_key(env, data_dir, "alpha")
        opengrove(env, data_dir, "keys", "revoke", revoked.key_id)
        server = ServerProcess(data_dir, env=env).start()
        try:
            yield KeyedServer(server, env, alpha, beta, revoked)
        finally:
            server.stop()


# -- keys ------------------------------------------------------------------------------


def test_missing_wrong_and_revoked_keys_get_401(keyed: KeyedServer) -> None:
    for key in ("", "sk-og-wrong-key-0000000000000000000000000000", keyed.revoked.key):
        with pytest.raises(openai.AuthenticationError) as refused:
            keyed.client(key).beta.assistants.list()
        assert refused.value.status_code == 401
        assert refused.value.code == "invalid_api_key"
        assert keyed.alpha.key not in str(refused.value.body)
        if key:
            assert key not in str(refused.value.body)  # redacted: never echoed whole
    assert keyed.client(keyed.alpha.key).beta.assistants.list().data is not None


def test_health_is_open_and_logs_hold_no_key(keyed: KeyedServer) -> None:
    assert httpx.get(f"{keyed.server.base_url}/health").status_code == 200
    docs = httpx.get(
        f"{keyed.server.base_url}/docs", headers={"Authorization": f"Bearer {keyed.alpha.key}"}
    )
    assert docs.status_code == 404  # off by default
    listed = opengrove(keyed.env, keyed.server.data_dir, "keys", "list")
    assert keyed.alpha.key_id in listed and "revoked" in listed
    for secret in (keyed.alpha.key, keyed.beta.key, keyed.revoked.key):
        assert secret not in listed
        assert secret not in keyed.server.log()


def test_project_and_organization_headers_must_match(keyed: KeyedServer) -> None:
    own = keyed.client(keyed.alpha.key, project=keyed.alpha.project_id)
    assert own.beta.assistants.list().data is not None
    assert keyed.client(keyed.alpha.key, project="alpha").beta.assistants.list() is not None
    with pytest.raises(openai.AuthenticationError) as other:
        keyed.client(keyed.alpha.key, project=keyed.beta.project_id).beta.assistants.list()
    assert other.value.code == "mismatched_project"
    with pytest.raises(openai.AuthenticationError) as organization:
        keyed.client(keyed.alpha.key, organization="org-elsewhere").beta.assistants.list()
    assert organization.value.code == "mismatched_organization"
    assert keyed.client(keyed.alpha.key, organization="org-opengrove").models.list().data


def test_sdks_work_unchanged_with_a_real_key(keyed: KeyedServer) -> None:
    run_python_flows(SDK_VERSIONS[-1], keyed.server.base_url, key=keyed.alpha.key)
    flows = node_script(
        "flows.mjs", f"{keyed.server.base_url}/v1", "fake-model", key=keyed.alpha.key
    )
    assert flows.returncode == 0, flows.stdout + flows.stderr
    auth = node_script(
        "auth.mjs", f"{keyed.server.base_url}/v1", keyed.alpha.key, keyed.revoked.key
    )
    assert auth.returncode == 0, auth.stdout + auth.stderr
    assert "4 passed, 0 failed" in auth.stdout


def test_run_usage_is_charged_to_the_projects_token_budget(
    keyed: KeyedServer, upstream: FakeUpstream
) -> None:
    alpha = keyed.client(keyed.alpha.key)
    assistant = alpha.beta.assistants.create(model="fake-model")
    thread = alpha.beta.threads.create(messages=[{"role": "user", "content": "count me"}])
    # Budgets are per clock minute: start where the whole check fits in one.
    into_minute = time.time() % WINDOW_SECONDS
    if into_minute > WINDOW_SECONDS - 15:
        time.sleep(WINDOW_SECONDS - into_minute + 0.5)
    upstream.script(
        FakeReply(text="counted", usage={"prompt_tokens": 700, "completion_tokens": 77})
    )
    raw = alpha.beta.threads.runs.with_raw_response.create(
        thread_id=thread.id, assistant_id=assistant.id
    )
    before = int(raw.headers["x-ratelimit-remaining-tokens"])
    run = raw.parse()
    while alpha.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status != "completed":
        time.sleep(0.05)
    time.sleep(2.5)  # charged within a second; totals re-read at most once a second
    # A runs-class request (this one refused: the run has ended) reports the budget.
    refused = httpx.post(
        f"{keyed.server.base_url}/v1/threads/{thread.id}/runs/{run.id}/cancel",
        headers={"Authorization": f"Bearer {keyed.alpha.key}"},
    )
    assert refused.status_code == 400
    remaining = int(refused.headers["x-ratelimit-remaining-tokens"])
    assert before - remaining >= 777


# -- the route table ---------------------------------------------------------------------

# With project beta's key, on project alpha's objects: 404, exactly as for a missing id.
FOREIGN_OBJECT: dict[str, dict[str, Any] | None] = {
    "GET /v1/assistants/{assistant_id}": None,
    "POST /v1/assistants/{assistant_id}": {"name": "taken"},
    "DELETE /v1/assistants/{assistant_id}": None,
    "GET /v1/threads/{thread_id}": None,
    "POST /v1/threads/{thread_id}": {"metadata": {"k": "v"}},
    "DELETE /v1/threads/{thread_id}": None,
    "POST /v1/threads/{thread_id}/messages": {"role": "user", "content": "hi"},
    "GET /v1/threads/{thread_id}/messages": None,
    "GET /v1/threads/{thread_id}/messages/{message_id}": None,
    "POST /v1/threads/{thread_id}/messages/{message_id}": {"metadata": {"k": "v"}},
    "DELETE /v1/threads/{thread_id}/messages/{message_id}": None,
    "POST /v1/threads/{thread_id}/runs": {"assistant_id": "{b_assistant}"},
    "GET /v1/threads/{thread_id}/runs": None,
    "GET /v1/threads/{thread_id}/runs/{run_id}": None,
    "POST /v1/threads/{thread_id}/runs/{run_id}": {"metadata": {"k": "v"}},
    "POST /v1/threads/{thread_id}/runs/{run_id}/cancel": None,
    "POST /v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs": {"tool_outputs": []},
    "GET /v1/threads/{thread_id}/runs/{run_id}/steps": None,
    "GET /v1/threads/{thread_id}/runs/{run_id}/steps/{step_id}": None,
    "GET /v1/files/{file_id}": None,
    "DELETE /v1/files/{file_id}": None,
    "GET /v1/files/{file_id}/content": None,
    "GET /v1/vector_stores/{vector_store_id}": None,
    "POST /v1/vector_stores/{vector_store_id}": {"name": "taken"},
    "DELETE /v1/vector_stores/{vector_store_id}": None,
    "POST /v1/vector_stores/{vector_store_id}/files": {"file_id": "{b_file}"},
    "GET /v1/vector_stores/{vector_store_id}/files": None,
    "GET /v1/vector_stores/{vector_store_id}/files/{file_id}": None,
    "POST /v1/vector_stores/{vector_store_id}/files/{file_id}": {"attributes": {"k": "v"}},
    "DELETE /v1/vector_stores/{vector_store_id}/files/{file_id}": None,
    "GET /v1/vector_stores/{vector_store_id}/files/{file_id}/content": None,
    "POST /v1/vector_stores/{vector_store_id}/file_batches": {"file_ids": ["{b_file}"]},
    "GET /v1/vector_stores/{vector_store_id}/file_batches/{batch_id}": None,
    "POST /v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel": None,
    "GET /v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/files": None,
    "POST /v1/vector_stores/{vector_store_id}/search": {"query": "anything"},
}
# With beta's key: the list holds none of alpha's objects.
FOREIGN_LIST = {
    "GET /v1/assistants": "assistant_id",
    "GET /v1/files": "file_id",
    "GET /v1/vector_stores": "vector_store_id",
}
# Creating with one of alpha's ids inside the body: 404 for that id, nothing made.
FOREIGN_REFERENCE: dict[str, dict[str, Any]] = {
    "POST /v1/assistants": {
        "model": "fake-model",
        "tool_resources": {"code_interpreter": {"file_ids": ["{file_id}"]}},
    },
    "POST /v1/threads": {
        "messages": [
            {
                "role": "user",
                "content": "x",
                "attachments": [{"file_id": "{file_id}", "tools": [{"type": "file_search"}]}],
            }
        ]
    },
    "POST /v1/threads/runs": {"assistant_id": "{assistant_id}"},
    "POST /v1/vector_stores": {"file_ids": ["{file_id}"]},
}
# The same through beta's own objects: every id a body can carry.
FOREIGN_REFERENCE_VIA_OWN = [
    ("POST", "/v1/threads/{b_thread}/runs", {"assistant_id": "{assistant_id}"}),
    (
        "POST",
        "/v1/threads/{b_thread}/messages",
        {
            "role": "user",
            "content": "x",
            "attachments": [{"file_id": "{file_id}", "tools": [{"type": "code_interpreter"}]}],
        },
    ),
    (
        "POST",
        "/v1/threads/{b_thread}/messages",
        {
            "role": "user",
            "content": [{"type": "image_file", "image_file": {"file_id": "{file_id}"}}],
        },
    ),
    (
        "POST",
        "/v1/threads/{b_thread}/runs",
        {
            "assistant_id": "{b_assistant}",
            "additional_messages": [
                {
                    "role": "user",
                    "content": "x",
                    "attachments": [{"file_id": "{file_id}", "tools": [{"type": "file_search"}]}],
                }
            ],
        },
    ),
    (
        "POST",
        "/v1/assistants/{b_assistant}",
        {"tool_resources": {"file_search": {"vector_store_ids": ["{vector_store_id}"]}}},
    ),
    (
        "POST",
        "/v1/threads/{b_thread}",
        {"tool_resources": {"file_search": {"vector_store_ids": ["{vector_store_id}"]}}},
    ),
    (
        "POST",
        "/v1/threads/runs",
        {
            "assistant_id": "{b_assistant}",
            "tool_resources": {"code_interpreter": {"file_ids": ["{file_id}"]}},
        },
    ),
    ("POST", "/v1/vector_stores/{b_vs}/files", {"file_id": "{file_id}"}),
    ("POST", "/v1/vector_stores/{b_vs}/file_batches", {"file_ids": ["{file_id}"]}),
]
# Routes with nothing of a project's in them (checked elsewhere: uploads own what they make;
# the model catalogue is the server's, narrowed by a project's allowlist).
NOT_OWNED = {
    "POST /v1/files": "an upload belongs to the uploader (test_uploads_stay_in_their_project)",
    "GET /v1/models": "the server's catalogue or the project's allowlist (test_model_allowlist)",
    "GET /v1/models/{model_id:path}": "as GET /v1/models",
}

# Served at the root only, for operators: /health without a key, /metrics with any key.
OPERATIONS = {"/health", "/metrics"}

MISSING = {
    "assistant_id": "asst_" + "0" * 24,
    "thread_id": "thread_" + "0" * 24,
    "message_id": "msg_" + "0" * 24,
    "run_id": "run_" + "0" * 24,
    "step_id": "step_" + "0" * 24,
    "file_id": "file-" + "0" * 24,
    "vector_store_id": "vs_" + "0" * 24,
    "batch_id": "vsfb_" + "0" * 24,
}


def registered_routes() -> set[str]:
    app = create_app(Settings())
    return {
        f"{method} {route.path}"
        for route in app.routes
        if isinstance(route, APIRoute) and route.path.startswith("/v1/")
        for method in route.methods
    }


def test_the_route_table_covers_every_route() -> None:
    table = set(FOREIGN_OBJECT) | set(FOREIGN_LIST) | set(FOREIGN_REFERENCE) | set(NOT_OWNED)
    routes = registered_routes()
    assert routes - table == set(), "routes without a scoping row in tests/test_projects.py"
    assert table - routes == set(), "rows for routes the app no longer has"
    # Every route the app serves without /v1 is one of these too.
    app = create_app(Settings())
    bare = {
        f"{m} /v1{r.path}"
        for r in app.routes
        if isinstance(r, APIRoute) and r.path[:4] != "/v1/" and r.path not in OPERATIONS
        for m in r.methods
    }
    assert bare <= routes


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, list):
        return [_fill(item, ids) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, ids) for key, item in value.items()}
    return value


def _alpha_objects(alpha: openai.OpenAI, upstream: FakeUpstream) -> dict[str, str]:
    assistant = alpha.beta.assistants.create(model="fake-model", name="alpha's")
    file = alpha.files.create(file=("alpha.txt", b"Alpha's secret plans."), purpose="assistants")
    store = alpha.vector_stores.create(name="alpha store", file_ids=[file.id])
    batch = alpha.vector_stores.file_batches.create_and_poll(store.id, file_ids=[file.id])
    thread = alpha.beta.threads.create(messages=[{"role": "user", "content": "alpha asks"}])
    upstream.script(FakeReply(text="alpha's answer"))
    run = alpha.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
    )
    assert run.status == "completed"
    step = alpha.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data[0]
    message = alpha.beta.threads.messages.list(thread.id, order="asc").data[0]
    return {
        "assistant_id": assistant.id,
        "thread_id": thread.id,
        "message_id": message.id,
        "run_id": run.id,
        "step_id": step.id,
        "file_id": file.id,
        "vector_store_id": store.id,
        "batch_id": batch.id,
    }


def _error(response: httpx.Response) -> dict[str, Any]:
    return response.json()["error"]


def test_another_projects_objects_are_missing_everywhere(
    keyed: KeyedServer, upstream: FakeUpstream
) -> None:
    alpha = keyed.client(keyed.alpha.key)
    ids = _alpha_objects(alpha, upstream)
    beta = keyed.client(keyed.beta.key)
    own = {
        "b_assistant": beta.beta.assistants.create(model="fake-model").id,
        "b_thread": beta.beta.threads.create().id,
        "b_file": beta.files.create(file=("b.txt", b"beta"), purpose="assistants").id,
        "b_vs": beta.vector_stores.create(name="beta").id,
    }
    headers = {"Authorization": f"Bearer {keyed.beta.key}"}
    with httpx.Client(
        base_url=keyed.server.base_url,
        headers=headers,
        event_hooks={"response": [check_response]},
        timeout=30,
    ) as http:
        checked = 0
        for route, body in FOREIGN_OBJECT.items():
            method, path = route.split(" ", 1)
            foreign = http.request(
                method, path.format(**ids), json=_fill(body, ids | own) if body else None
            )
            missing = http.request(
                method, path.format(**MISSING), json=_fill(body, MISSING | own) if body else None
            )
            assert foreign.status_code == 404, (route, foreign.text)
            assert missing.status_code == 404, (route, missing.text)
            message = _error(foreign)["message"]
            for name, value in ids.items():
                message = message.replace(value, MISSING[name])
            assert message == _error(missing)["message"], route
            checked += 1
        for route, id_name in FOREIGN_LIST.items():
            listed = http.get(route.split(" ", 1)[1])
            assert listed.status_code == 200
            assert ids[id_name] not in {item["id"] for item in listed.json()["data"]}, route
            checked += 1
        references = [(*route.split(" ", 1), body) for route, body in FOREIGN_REFERENCE.items()]
        for method, path, body in [*references, *FOREIGN_REFERENCE_VIA_OWN]:
            refused = http.request(method, path.format(**own), json=_fill(body, ids | own))
            assert refused.status_code == 404, (method, path, refused.text)
            assert any(value in _error(refused)["message"] for value in ids.values()), path
            checked += 1
    assert checked == len(FOREIGN_OBJECT) + len(FOREIGN_LIST) + len(references) + len(
        FOREIGN_REFERENCE_VIA_OWN
    )
    # Nothing of alpha's was touched: not deleted, not renamed, no message added.
    assert alpha.beta.assistants.retrieve(ids["assistant_id"]).name == "alpha's"
    assert alpha.beta.threads.retrieve(ids["thread_id"]).metadata == {}
    assert len(alpha.beta.threads.messages.list(ids["thread_id"]).data) == 2
    assert (
        alpha.beta.threads.runs.retrieve(ids["run_id"], thread_id=ids["thread_id"]).metadata == {}
    )
    assert alpha.files.retrieve(ids["file_id"]).filename == "alpha.txt"
    store = alpha.vector_stores.retrieve(ids["vector_store_id"])
    assert store.name == "alpha store" and store.file_counts.completed == 1
    assert alpha.vector_stores.files.retrieve(
        ids["file_id"], vector_store_id=ids["vector_store_id"]
    ).attributes in (None, {})
    # And beta made nothing from alpha's ids: its own lists hold only its own objects.
    assert {a.id for a in beta.beta.assistants.list().data} == {own["b_assistant"]}
    assert {s.id for s in beta.vector_stores.list().data} == {own["b_vs"]}
    assert beta.beta.threads.runs.list(own["b_thread"]).data == []
    assert beta.beta.threads.messages.list(own["b_thread"]).data == []
    assert beta.vector_stores.files.list(own["b_vs"]).data == []


def test_uploads_stay_in_their_project(keyed: KeyedServer) -> None:
    alpha, beta = keyed.client(keyed.alpha.key), keyed.client(keyed.beta.key)
    uploaded = beta.files.create(file=("mine.txt", b"beta's"), purpose="assistants")
    assert uploaded.id not in {f.id for f in alpha.files.list().data}
    assert uploaded.id in {f.id for f in beta.files.list().data}
    with pytest.raises(openai.NotFoundError):
        alpha.files.content(uploaded.id)
    assert beta.files.content(uploaded.id).read() == b"beta's"


def test_model_allowlist(keyed: KeyedServer) -> None:
    keyed.set_project("beta", "--models", "fake-model")
    try:
        beta = keyed.client(keyed.beta.key)
        assert [m.id for m in beta.models.list().data] == ["fake-model"]
        with pytest.raises(openai.BadRequestError) as refused:
            beta.beta.assistants.create(model="gpt-4o")
        assert refused.value.code == "model_not_found"
        assert beta.beta.assistants.create(model="fake-model").model == "fake-model"
        # Alpha keeps the server's configured models.
        alpha_models = {m.id for m in keyed.client(keyed.alpha.key).models.list().data}
        assert {"gpt-4o", "fake-model"} <= alpha_models
    finally:
        keyed.set_project("beta", "--models", "*")


def test_storage_quota_refuses_an_upload_and_keeps_nothing(keyed: KeyedServer) -> None:
    beta = keyed.client(keyed.beta.key)
    used = sum(f.bytes for f in beta.files.list().data)
    keyed.set_project("beta", "--quota", f"stored_bytes={used + 1000}")
    files_dir = keyed.server.data_dir / "files"
    try:
        fits = beta.files.create(file=("fits.bin", b"x" * 800), purpose="assistants")
        before = sorted(p.name for p in files_dir.rglob("*") if p.is_file())
        listed = {f.id for f in beta.files.list().data}
        with pytest.raises(openai.RateLimitError) as refused:
            beta.files.create(file=("too-big.bin", b"y" * 400), purpose="assistants")
        assert refused.value.code == "insufficient_quota"
        assert {f.id for f in beta.files.list().data} == listed
        assert sorted(p.name for p in files_dir.rglob("*") if p.is_file()) == before
        beta.files.delete(fits.id)  # room again
        beta.files.create(file=("now-fits.bin", b"y" * 400), purpose="assistants")
    finally:
        keyed.set_project("beta", "--quota", "stored_bytes=0")


def test_active_run_and_open_stream_quotas(keyed: KeyedServer, upstream: FakeUpstream) -> None:
    beta = keyed.client(keyed.beta.key)
    assistant = beta.beta.assistants.create(model="fake-model")
    keyed.set_project("beta", "--quota", "active_runs=1", "--quota", "open_streams=1")
    try:
        upstream.script(FakeReply(text="slow", hang_seconds=1.5))
        busy = beta.beta.threads.create()
        first = beta.beta.threads.runs.create(thread_id=busy.id, assistant_id=assistant.id)
        other = beta.beta.threads.create()
        with pytest.raises(openai.RateLimitError) as refused:
            beta.beta.threads.runs.create(thread_id=other.id, assistant_id=assistant.id)
        assert refused.value.code == "insufficient_quota"
        assert beta.beta.threads.runs.list(other.id).data == []  # nothing was stored
        with httpx.Client(
            base_url=f"{keyed.server.base_url}/v1",
            headers={"Authorization": f"Bearer {keyed.beta.key}"},
            timeout=30,
        ) as http:
            path = f"/threads/{busy.id}/runs/{first.id}?stream=true"
            with http.stream("GET", path) as following:
                assert following.status_code == 200
                second = http.get(path)
                assert second.status_code == 429
                assert second.json()["error"]["code"] == "insufficient_quota"
                body = b"".join(following.iter_bytes())
            assert b"thread.run.completed" in body
            # The slot came back when the stream ended.
            with http.stream("GET", path) as again:
                assert again.status_code == 200
                assert b"[DONE]" in b"".join(again.iter_bytes())
        # A second run is accepted once the first has ended.
        upstream.script(FakeReply(text="now"))
        done = beta.beta.threads.runs.create_and_poll(
            thread_id=other.id, assistant_id=assistant.id, poll_interval_ms=50
        )
        assert done.status == "completed"
    finally:
        keyed.set_project("beta", "--quota", "active_runs=0", "--quota", "open_streams=0")


def test_validating_client_works_with_keys(keyed: KeyedServer) -> None:
    with validating_http_client() as http_client:
        client = openai.OpenAI(
            base_url=f"{keyed.server.base_url}/v1",
            api_key=keyed.alpha.key,
            http_client=http_client,
            max_retries=0,
        )
        assert client.beta.assistants.list().object == "list"


# -- fairness ----------------------------------------------------------------------------

FLOOD = 48  # project alpha's runs, queued at once
RUN_SECONDS = 0.4  # each waits this long for its model
SLOTS = 4  # runs the server executes at once
# Bound: beta's run, created after alpha's flood, completes within two run lengths of the
# next free slot plus overhead, not after the flood (FLOOD / SLOTS * RUN_SECONDS = 4.8 s).
BETA_BOUND_SECONDS = 2.5


def test_a_flood_from_one_project_does_not_starve_another(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.reset()
    with fresh_database(tmp_path_factory.mktemp("fair-db")) as url:
        data_dir = tmp_path_factory.mktemp("fair")
        env = {
            **os.environ,
            **server_env(url, fake_upstream, data_dir),
            "OPENGROVE_WORKER_CONCURRENCY": str(SLOTS),
        }
        alpha_key = issue_key(env, data_dir, "alpha").key
        beta_key = issue_key(env, data_dir, "beta").key
        server = ServerProcess(data_dir, env=env).start()
        try:
            client = {
                key: openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
                for key in (alpha_key, beta_key)
            }
            alpha, beta = client[alpha_key], client[beta_key]
            fake_upstream.script(
                *[FakeReply(text="slow", hang_seconds=RUN_SECONDS) for _ in range(FLOOD + 1)]
            )
            a_assistant = alpha.beta.assistants.create(model="fake-model")
            b_assistant = beta.beta.assistants.create(model="fake-model")
            b_thread = beta.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
            flood_started = time.monotonic()
            flood = [
                alpha.beta.threads.create_and_run(
                    assistant_id=a_assistant.id,
                    thread={"messages": [{"role": "user", "content": "flood"}]},
                )
                for _ in range(FLOOD)
            ]
            b_started = time.monotonic()
            b_run = beta.beta.threads.runs.create(
                thread_id=b_thread.id, assistant_id=b_assistant.id
            )
            while beta.beta.threads.runs.retrieve(b_run.id, thread_id=b_thread.id).status not in (
                "completed",
                "failed",
            ):
                time.sleep(0.05)
            b_seconds = time.monotonic() - b_started
            still_waiting = sum(
                alpha.beta.threads.runs.retrieve(r.id, thread_id=r.thread_id).status
                in ("queued", "in_progress")
                for r in flood
            )
            assert b_seconds < BETA_BOUND_SECONDS, (b_seconds, still_waiting)
            assert still_waiting > FLOOD / 2, "the flood ended first: the test proved nothing"
            for run in flood:  # the flood itself still completes
                while alpha.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id).status in (
                    "queued",
                    "in_progress",
                ):
                    time.sleep(0.1)
            assert time.monotonic() - flood_started >= FLOOD / SLOTS * RUN_SECONDS * 0.9
        finally:
            server.stop()
            fake_upstream.reset()


# -- migration ---------------------------------------------------------------------------


def test_existing_objects_move_into_the_default_project(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from app.migrate import upgrade_database

    async def migrate(url: str) -> list[tuple[str, ...]]:
        await upgrade_database(url, "0004")  # the schema before projects
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO assistants (id, created_at, seq, model, tools, "
                        "tool_resources, metadata) VALUES ('asst_old', 1, 1, 'gpt-4o', "
                        "'[]', '{}', '{}')"
                    )
                )
                await conn.execute(
                    text(
                        "INSERT INTO threads (id, created_at, seq, tool_resources, metadata)"
                        " VALUES ('thread_old', 1, 1, '{}', '{}')"
                    )
                )
            await upgrade_database(url)
            async with engine.connect() as conn:
                rows = await conn.execute(
                    text(
                        "SELECT 'assistant', project_id FROM assistants UNION ALL "
                        "SELECT 'thread', project_id FROM threads UNION ALL "
                        "SELECT 'project', name FROM projects"
                    )
                )
                return sorted(tuple(row) for row in rows)
        finally:
            await engine.dispose()

    with fresh_database(tmp_path_factory.mktemp("migrate-db")) as url:
        migrated = asyncio.run(migrate(url))
    assert migrated == [
        ("assistant", "proj_default"),
        ("project", "default"),
        ("thread", "proj_default"),
    ]


# -- safe by default ---------------------------------------------------------------------


def test_no_keys_on_a_public_interface_refuses_to_start(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream
) -> None:
    from tests.server_process import free_port

    with fresh_database(tmp_path_factory.mktemp("public-db")) as url:
        data_dir = tmp_path_factory.mktemp("public")
        env = {**os.environ, **server_env(url, fake_upstream, data_dir)}
        port = free_port()
        command = [sys.executable, "-m", "app.cli", "serve", "--host", "0.0.0.0"]
        command += ["--port", str(port), "--data-dir", str(data_dir)]
        refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        assert "Refusing to serve on 0.0.0.0 with no API keys" in refused.stdout + refused.stderr

        # With a bootstrap key it starts, and that key is the one that works.
        key = "sk-og-bootstrap-" + "x" * 32
        server = subprocess.Popen(
            command,
            env={**env, "OPENGROVE_BOOTSTRAP_KEY": key},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            assert httpx.get(f"{base}/v1/models").status_code == 401
            ok = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        finally:
            server.terminate()
            server.wait(timeout=30)
        listed = opengrove(env, data_dir, "keys", "list")
        assert "name=bootstrap" in listed and "project=default" in listed and key not in listed
