"""A newcomer's first mistakes get clear words, and the server's log stays readable.

These run against a server of their own whose environment has no provider credentials at
all (no OPENAI_API_KEY, no OPENAI_API_BASE): a fresh machine, as a new user has it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app.migrate import _head_revisions, alembic_config
from tests.fake_upstream import FakeUpstream
from tests.server_process import ServerProcess
from tests.spec_check import check_response, validating_sdk_client

PROVIDER_VARIABLES = ("OPENAI_API_KEY", "OPENAI_API_BASE", "ANTHROPIC_API_KEY")


@pytest.fixture(scope="module")
def bare_server(
    tmp_path_factory: pytest.TempPathFactory, database_url: str, fake_upstream: FakeUpstream
) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("bare")
    models = data_dir / "models.yaml"
    models.write_text(
        "models:\n"
        "  - name: keyless-alias\n"  # an alias naming a key variable that is not set
        "    model: openai/fake-model\n"
        f"    api_base: {fake_upstream.base_url}\n"
    )
    env = {name: value for name, value in os.environ.items() if name not in PROVIDER_VARIABLES}
    env |= {"DATABASE_URL": database_url, "OPENGROVE_MODEL_CONFIG": str(models)}
    server = ServerProcess(data_dir, env=env)
    server.env = env  # exactly this environment: nothing inherited beside it
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bare_client(bare_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with validating_sdk_client(bare_server.base_url, api_key="anything") as sdk:
        yield sdk


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]


def wait_for_end(client: openai.OpenAI, thread_id: str, run_id: str) -> Any:
    deadline = time.monotonic() + 30
    run = client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
    while run.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.05)
        run = client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
    return run


def ended_run(client: openai.OpenAI, model: str) -> Any:
    assistant = client.beta.assistants.create(model=model)
    run = client.beta.threads.create_and_run(
        assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": "hi"}]}
    )
    return wait_for_end(client, run.thread_id, run.id)


def test_missing_provider_key_is_named(bare_client: openai.OpenAI) -> None:
    run = ended_run(bare_client, "gpt-4o")
    assert run.status == "failed"
    assert run.last_error is not None
    assert run.last_error.code == "server_error"
    assert run.last_error.message == (
        "No API key for provider 'openai': set OPENAI_API_KEY or configure the model in "
        "OPENGROVE_MODEL_CONFIG."
    )


def test_alias_without_its_key_is_named_too(bare_client: openai.OpenAI) -> None:
    run = ended_run(bare_client, "keyless-alias")
    assert run.status == "failed"
    assert run.last_error is not None
    assert run.last_error.message.startswith("No API key for provider 'openai'")


def test_unknown_model_is_refused_up_front(
    bare_client: openai.OpenAI, bare_server: ServerProcess
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        bare_client.beta.assistants.create(model="my-local-model")
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert error["message"].startswith(
        "The model 'my-local-model' does not exist or you do not have access to it"
    )
    assert "OPENGROVE_MODEL_CONFIG" in error["message"]

    assistant = bare_client.beta.assistants.create(model="gpt-4o")
    thread = bare_client.beta.threads.create()
    with pytest.raises(openai.BadRequestError) as refused_run:
        bare_client.beta.threads.runs.create(
            thread_id=thread.id, assistant_id=assistant.id, model="not-a-model"
        )
    assert refused_run.value.code == "model_not_found"
    # Nothing was stored for the refused run.
    assert bare_client.beta.threads.runs.list(thread_id=thread.id).data == []
    with pytest.raises(openai.BadRequestError):
        bare_client.beta.assistants.update(assistant.id, model="still-not-a-model")
    assert bare_client.beta.assistants.retrieve(assistant.id).model == "gpt-4o"


@pytest.mark.parametrize(
    ("headers", "said"),
    [
        ({"Content-Type": "application/x-www-form-urlencoded"}, "x-www-form-urlencoded"),
        ({"Content-Type": "text/plain"}, "text/plain"),
    ],
)
def test_body_without_json_content_type(
    bare_server: ServerProcess, headers: dict[str, str], said: str
) -> None:
    # What `curl -d '{...}'` sends: JSON text under a form content type.
    with httpx.Client(event_hooks={"response": [check_response]}) as http:
        response = http.post(
            f"{bare_server.base_url}/v1/assistants",
            content=b'{"model": "gpt-4o"}',
            headers=headers,
        )
    error = error_of(response, 400)
    assert "must be JSON" in error["message"]
    assert "'Content-Type: application/json'" in error["message"]
    assert said in error["message"]
    assert "None" not in error["message"] and "bytes" not in error["message"]


def test_body_that_is_not_json(bare_server: ServerProcess) -> None:
    response = httpx.post(
        f"{bare_server.base_url}/v1/assistants",
        content=b"model=gpt-4o",
        headers={"Content-Type": "application/json"},
    )
    assert "could not parse the JSON body" in error_of(response, 400)["message"]


def test_health_reports_parts(bare_server: ServerProcess) -> None:
    body = httpx.get(f"{bare_server.base_url}/health").json()
    assert body["database"] == "ok"
    assert body["vector_index"] in ("ok", "starting")
    assert body["status"] in ("ok", "starting")
    deadline = time.monotonic() + 30
    while body["status"] != "ok" and time.monotonic() < deadline:
        time.sleep(0.05)
        body = httpx.get(f"{bare_server.base_url}/health").json()
    assert body["status"] == "ok" and body["vector_index"] == "ok"


def test_log_has_no_library_noise(bare_client: openai.OpenAI, bare_server: ServerProcess) -> None:
    # The tests above made litellm load, fail to place a model and fail a call.
    test_missing_provider_key_is_named(bare_client)
    with pytest.raises(openai.BadRequestError):
        bare_client.beta.assistants.create(model="unplaceable-model")
    log = bare_server.log()
    assert "\x1b[" not in log, "colour codes in the log"
    for banner in ("Give Feedback", "Get Help", "Provider List", "LiteLLM.Info"):
        assert banner not in log
    # litellm's own handler would print its lines a second time, in a format of its own.
    ours = re.compile(r"\d{4}-\d\d-\d\d [\d:,]+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")
    foreign = [
        line for line in log.splitlines() if "litellm" in line.lower() and not ours.match(line)
    ]
    assert not foreign, f"litellm lines outside our log format: {foreign[:3]}"


def test_fast_migration_check_agrees_with_alembic(database_url: str) -> None:
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())
    assert _head_revisions() == heads


def test_readme_quick_start_names_port_and_data_dir() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "--port" in quick_start and "--data-dir" in quick_start
    assert '{"status":"ok"' in quick_start  # says what ready looks like
