"""Validate every JSON response the SDK receives against ../shared/openai-spec/.

The SDK's httpx client gets a response hook that maps METHOD + path to the spec's
operationId and checks the body (errors against ErrorResponse). Tests therefore
validate every call they make without repeating themselves, and can assert which
operations were exercised.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml

SPEC_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "openai-spec"
sys.path.insert(0, str(SPEC_DIR))

import validate as spec_validate  # noqa: E402

_raw_spec = yaml.safe_load((SPEC_DIR / "assistants-openapi.yaml").read_text())
_ROUTES: list[tuple[str, re.Pattern[str], str]] = []
for _path, _item in _raw_spec["paths"].items():
    _pattern = re.compile("^" + re.sub(r"\{[^}]+\}", r"[^/]+", _path) + "$")
    for _method, _op in _item.items():
        if isinstance(_op, dict) and "operationId" in _op:
            _ROUTES.append((_method.upper(), _pattern, _op["operationId"]))
# Literal segments must win over templates (/threads/runs vs /threads/{thread_id}).
_ROUTES.sort(key=lambda route: route[1].pattern.count("[^/]+"))

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
    spec_validate.validate_response(operation_id, response.status_code, body)
    validated_operations[operation_id] += 1


def validating_http_client() -> httpx.Client:
    return httpx.Client(event_hooks={"response": [check_response]}, timeout=60)


def validate_schema(name: str, obj: Any) -> None:
    spec_validate.validate_schema(name, obj)


def validate_sse_stream(text: str) -> list[tuple[str, Any]]:
    return spec_validate.validate_sse_stream(text, require_done=True)
