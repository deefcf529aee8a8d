"""Validate every JSON response the SDK receives against the vendored OpenAI spec.

The SDK's httpx client gets a response hook that maps METHOD + path to the spec's
operationId and checks the body (errors against ErrorResponse). Tests therefore
validate every call they make without repeating themselves, and can assert which
operations were exercised. The spec and the validator live in tests/openapi/.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tests.openapi import validator

_ROUTES: list[tuple[str, re.Pattern[str], str]] = sorted(
    (
        (method, re.compile("^" + re.sub(r"\{[^}]+\}", r"[^/]+", path) + "$"), operation_id)
        for operation_id, (method, path) in validator.spec().operations.items()
    ),
    # Literal segments must win over templates (/threads/runs vs /threads/{thread_id}).
    key=lambda route: route[1].pattern.count("[^/]+"),
)

validated_operations: Counter[str] = Counter()


def operation_for(method: str, path: str) -> str | None:
    path = path.removeprefix("/v1")
    for route_method, pattern, operation_id in _ROUTES:
        if route_method == method and pattern.match(path):
            return operation_id
    return None


def check_response(response: httpx.Response) -> None:
    operation_id = operation_for(response.request.method, response.request.url.path)
    content_type = response.headers.get("content-type", "")
    if operation_id is None or not content_type.startswith("application/json"):
        return
    response.read()
    body = json.loads(response.content)
    validator.validate_response(operation_id, response.status_code, body)
    validated_operations[operation_id] += 1


def validating_http_client() -> httpx.Client:
    return httpx.Client(event_hooks={"response": [check_response]}, timeout=60)


@contextmanager
def validating_sdk_client(base_url: str, api_key: str = "test", **options: Any) -> Iterator[Any]:
    """An `openai.OpenAI` for the server at `base_url`, every response spec-validated, no
    retries (a test sees the first answer)."""
    import openai

    with validating_http_client() as http_client:
        yield openai.OpenAI(
            base_url=f"{base_url}/v1",
            api_key=api_key,
            http_client=http_client,
            max_retries=0,
            **options,
        )


def validate_schema(name: str, obj: Any) -> None:
    validator.validate_schema(name, obj)


def validate_sse_stream(text: str) -> list[tuple[str, Any]]:
    return validator.validate_sse_stream(text, require_done=True)
