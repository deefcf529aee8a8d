"""Server-wide behaviour: /health, /v1/models, both URL prefixes, headers."""

from __future__ import annotations

import httpx
import openai
import pytest


def test_health(base_url: str) -> None:
    response = httpx.get(f"{base_url}/health")
    body = response.json()
    assert response.status_code == 200 and body == {
        "status": "ok",
        "database": "ok",
        "vector_index": "ok",
        "code_interpreter": "ok",  # ready: ServerProcess waits for the whole "ok"
        "llm": "loaded",  # the test servers preload it (OPENGROVE_PRELOAD_LLM)
    }


def test_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    # Configured names, then the aliases of the model config file.
    assert [m.id for m in models.data] == ["gpt-4o", "fake-model", "fake-anthropic", "fake-ollama"]
    assert client.models.retrieve("fake-model").id == "fake-model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_served_with_and_without_v1_prefix(base_url: str) -> None:
    bare = openai.OpenAI(base_url=base_url, api_key="k", max_retries=0)
    assistant = bare.beta.assistants.create(model="gpt-4o", name="no prefix")
    prefixed = openai.OpenAI(base_url=f"{base_url}/v1", api_key="k", max_retries=0)
    assert prefixed.beta.assistants.retrieve(assistant.id).name == "no prefix"


def test_request_id_and_beta_header(http: httpx.Client) -> None:
    plain = http.get("/assistants", headers={})
    assert plain.status_code == 200 and plain.headers["x-request-id"].startswith("req_")
    with_beta = http.get("/assistants", headers={"OpenAI-Beta": "assistants=v2"})
    assert with_beta.status_code == 200
    echoed = http.get("/assistants/asst_x", headers={"x-request-id": "trace-123"})
    assert echoed.status_code == 404 and echoed.headers["x-request-id"] == "trace-123"


def test_message_run_id_filter(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    assert len(client.beta.threads.messages.list(thread.id).data) == 1
    assert client.beta.threads.messages.list(thread.id, run_id="run_other").data == []


def test_cli_help_lists_environment_variables() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in (
        "DATABASE_URL",
        "OPENGROVE_DATA_DIR",
        "QDRANT_URL",
        "OPENGROVE_MODELS",
        "--data-dir",
    ):
        assert name in out
