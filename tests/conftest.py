from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from tests.databases import backend_name, fresh_database
from tests.fake_upstream import FakeUpstream
from tests.server_process import ServerProcess
from tests.spec_check import check_response, validating_sdk_client


def pytest_report_header() -> str:
    return f"opengrove database backend: {backend_name()}"


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fresh_database(tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def upstream(fake_upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    """The fake LLM upstream, with an empty script and request log for this test."""
    fake_upstream.reset()
    yield fake_upstream
    fake_upstream.reset()


def server_env(database_url: str, upstream: FakeUpstream, data_dir: Path) -> dict[str, str]:
    """Settings for a test server whose models all live on the fake upstream.

    One alias per wire dialect the fake speaks: `fake-model` (OpenAI chat completions),
    `fake-anthropic` (Anthropic Messages) and `fake-ollama` (Ollama's native /api/chat).
    """
    model_config = data_dir / "models.yaml"
    model_config.parent.mkdir(parents=True, exist_ok=True)
    model_config.write_text(
        "models:\n"
        "  - name: fake-model\n"
        "    model: openai/fake-model\n"
        f"    api_base: {upstream.base_url}\n"
        "    api_key_env: FAKE_UPSTREAM_KEY\n"
        "  - name: fake-anthropic\n"
        "    model: anthropic/claude-fake\n"
        f"    api_base: {upstream.root_url}\n"  # litellm appends /v1/messages
        "    api_key_env: FAKE_UPSTREAM_KEY\n"
        "  - name: fake-ollama\n"
        "    model: ollama_chat/llama-fake\n"
        f"    api_base: {upstream.root_url}\n"  # litellm appends /api/chat
        "    api_key_env: FAKE_UPSTREAM_KEY\n"
    )
    return {
        "DATABASE_URL": database_url,
        "OPENGROVE_MODELS": "gpt-4o,fake-model",
        "OPENGROVE_MODEL_CONFIG": str(model_config),
        "FAKE_UPSTREAM_KEY": "fake-key",
        # Plain model names reach litellm's OpenAI provider through its own environment.
        "OPENAI_API_BASE": upstream.base_url,
        "OPENAI_API_KEY": "fake-key",
        # Loaded before the server reports ready, so no test's first run pays for the import.
        "OPENGROVE_PRELOAD_LLM": "true",
        "OPENGROVE_LLM_TIMEOUT": "2",
        "OPENGROVE_LLM_ATTEMPTS": "3",
        "OPENGROVE_LLM_RETRY_DELAY": "0.05",
        # The tests' image URLs name example.com; this machine has no DNS to show it public.
        "OPENGROVE_IMAGE_URL_HOSTS": "example.com",
    }


@contextmanager
def own_server_client(
    data_dir: Path, upstream: FakeUpstream, **settings: str
) -> Iterator[openai.OpenAI]:
    """A server of its own (its own database, so no other worker runs its runs) with extra
    settings, and a validating SDK client on it."""
    with fresh_database(data_dir) as database_url:
        env = server_env(database_url, upstream, data_dir) | settings
        server = ServerProcess(data_dir, env=env).start()
        try:
            with validating_sdk_client(server.base_url) as sdk:
                yield sdk
        finally:
            server.stop()


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, database_url: str, fake_upstream: FakeUpstream
) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("server")
    proc = ServerProcess(data_dir, env=server_env(database_url, fake_upstream, data_dir)).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def base_url(server: ServerProcess) -> str:
    return server.base_url


@pytest.fixture(scope="session")
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with validating_sdk_client(base_url) as sdk:
        yield sdk


@pytest.fixture(scope="session")
def http(base_url: str) -> Iterator[httpx.Client]:
    """A plain HTTP client for what the SDK will not send (bad JSON, wrong types, …).

    Its responses are spec-validated too (errors against ErrorResponse).
    """
    with httpx.Client(
        base_url=f"{base_url}/v1", event_hooks={"response": [check_response]}, timeout=30
    ) as http_client:
        yield http_client
