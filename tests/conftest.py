from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.databases import backend_name, fresh_database
from tests.server_process import ServerProcess
from tests.spec_check import check_response, validating_http_client


def pytest_report_header() -> str:
    return f"opengrove database backend: {backend_name()}"


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fresh_database(tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("server"),
        env={"DATABASE_URL": database_url, "OPENGROVE_MODELS": "gpt-4o,fake-model"},
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def base_url(server: ServerProcess) -> str:
    return server.base_url


@pytest.fixture(scope="session")
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with validating_http_client() as http_client:
        yield openai.OpenAI(
            base_url=f"{base_url}/v1", api_key="test", http_client=http_client, max_retries=0
        )


@pytest.fixture(scope="session")
def http(base_url: str) -> Iterator[httpx.Client]:
    """A plain HTTP client for what the SDK will not send (bad JSON, wrong types, …).

    Its responses are spec-validated too (errors against ErrorResponse).
    """
    with httpx.Client(
        base_url=f"{base_url}/v1", event_hooks={"response": [check_response]}, timeout=30
    ) as http_client:
        yield http_client
