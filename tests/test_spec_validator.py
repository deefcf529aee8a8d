"""The spec validator itself: it accepts the spec's own examples and rejects broken bodies.

Every server test leans on tests/openapi/validator.py, so a validator that accepted anything
would make the whole suite meaningless. Positive cases come from the spec's `x-oaiMeta`
examples (only ones that agree with the schemas; many upstream examples are stale), negative
cases are those examples minimally broken. No server is needed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.openapi import validator
from tests.openapi.validator import (
    SpecViolation,
    parse_sse,
    to_json_schema,
    validate_request,
    validate_response,
    validate_schema,
    validate_sse_stream,
    validate_stream_event,
)

SPEC_SHA256 = "b3ce4300c6d592ac259b578acc7ac6743bf9915cdedf04f14e12bc4fd4e3dea5"
ERROR = {
    "error": {
        "message": "No assistant found with id 'asst_x'.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """The YAML as written (the validator keeps only the converted schemas)."""
    return yaml.load(validator.SPEC_PATH.read_text(), Loader=yaml.CSafeLoader)


def examples(raw: dict[str, Any], operation_id: str) -> dict[str, str]:
    """title -> response text of an operation's x-oaiMeta examples."""
    for item in raw["paths"].values():
        for op in item.values():
            if isinstance(op, dict) and op.get("operationId") == operation_id:
                found = op["x-oaiMeta"]["examples"]
                found = found if isinstance(found, list) else [found]
                return {e.get("title", ""): e["response"] for e in found}
    raise KeyError(operation_id)


@pytest.fixture(scope="module")
def assistant(raw: dict[str, Any]) -> dict[str, Any]:
    return json.loads(raw["components"]["schemas"]["AssistantObject"]["x-oaiMeta"]["example"])


@pytest.fixture(scope="module")
def thread(raw: dict[str, Any]) -> dict[str, Any]:
    return json.loads(examples(raw, "createThread")["Empty"])


@pytest.fixture(scope="module")
def message_delta(raw: dict[str, Any]) -> Any:
    text = examples(raw, "createRun")["Streaming"]
    events = parse_sse("\n".join(line for line in text.splitlines() if line.strip() != "..."))
    return next(data for name, data in events if name == "thread.message.delta")


def nested_filter(operator: str) -> dict[str, Any]:
    """and(eq, or(<operator>)): the inner compound filter is reached through $recursiveRef."""
    inner = {"type": "or", "filters": [{"type": operator, "key": "year", "value": 2020}]}
    return {"type": "and", "filters": [{"type": "eq", "key": "region", "value": "us"}, inner]}


def sse(*events: tuple[str, Any]) -> str:
    return "".join(
        f"event: {name}\ndata: {data if isinstance(data, str) else json.dumps(data)}\n\n"
        for name, data in events
    )


def test_vendored_spec_is_the_pinned_copy() -> None:
    # tests/openapi/README.md records where it came from; a silent edit must fail here.
    assert hashlib.sha256(validator.SPEC_PATH.read_bytes()).hexdigest() == SPEC_SHA256
    assert validator.spec().info["version"] == "2.3.0"
    assert len(validator.spec().operations) == 50
    assert {"thread.run.created", "thread.message.delta", "error", "done"} <= set(
        validator.spec().stream_events
    )


def test_accepts_the_specs_own_examples(
    raw: dict[str, Any], assistant: dict[str, Any], thread: dict[str, Any], message_delta: Any
) -> None:
    validate_schema("AssistantObject", assistant)
    validate_response("getAssistant", 200, json.loads(examples(raw, "getAssistant")[""]))
    validate_response("createThread", 200, thread)
    validate_response("listAssistants", 200, json.loads(examples(raw, "listAssistants")[""]))
    validate_stream_event("thread.message.delta", message_delta)
    events = validate_sse_stream(
        sse(("thread.message.delta", message_delta), ("done", "[DONE]")), require_done=True
    )
    assert [name for name, _ in events] == ["thread.message.delta", "done"]


def test_accepts_error_bodies_documented_or_not() -> None:
    validate_response("getAssistant", 404, ERROR)  # undocumented status: ErrorResponse fallback
    validate_response("createRun", 429, ERROR)  # documented via components.responses
    validate_stream_event("error", ERROR["error"])  # the SSE error event carries no wrapper


def test_accepts_openapi_isms(assistant: dict[str, Any]) -> None:
    validate_response("getAssistant", 200, dict(assistant, x_extension=1))  # extra keys allowed
    validate_request(  # nullable (3.0 style) request fields
        "createRun",
        {"assistant_id": "asst_1", "truncation_strategy": None, "tool_choice": None,
         "response_format": None, "temperature": None},
    )  # fmt: skip
    # $recursiveRef: a compound filter nested in a compound filter
    validate_request("searchVectorStore", {"query": "q", "filters": nested_filter("gte")})


def test_conversion_of_openapi_keywords() -> None:
    ref = {"$ref": "#/components/schemas/X"}
    assert to_json_schema({**ref, "nullable": True}) == {"anyOf": [{"type": "null"}, ref]}
    assert to_json_schema({"allOf": [ref, {"nullable": True}], "description": "d"}) == {
        "anyOf": [{"type": "null"}, {"allOf": [ref], "description": "d"}]
    }
    assert to_json_schema({"type": "number", "minimum": 0, "exclusiveMinimum": True}) == {
        "type": "number",
        "exclusiveMinimum": 0,
    }
    assert to_json_schema({"items": {"$recursiveRef": "#"}}, anchor="F") == {
        "items": {"$ref": "#/components/schemas/F"}
    }
    # data keywords are left alone even when they look like schemas
    assert to_json_schema(
        {"enum": [{"nullable": True}], "x-oaiMeta": {}, "format": "unixtime"}
    ) == {"enum": [{"nullable": True}]}


BROKEN: dict[str, Callable[[dict[str, Any], dict[str, Any], Any], None]] = {
    "object='foo'": lambda a, t, d: validate_schema("AssistantObject", dict(a, object="foo")),
    "missing id": lambda a, t, d: validate_response(
        "getAssistant", 200, {k: v for k, v in a.items() if k != "id"}
    ),
    "created_at as string": lambda a, t, d: validate_schema(
        "AssistantObject", dict(a, created_at="yesterday")
    ),
    "run event carrying a thread": lambda a, t, d: validate_stream_event("thread.run.created", t),
    "SSE without final done": lambda a, t, d: validate_sse_stream(
        sse(("thread.message.delta", d)), require_done=True
    ),
    "SSE with a broken event": lambda a, t, d: validate_sse_stream(
        sse(("thread.message.delta", {**d, "object": "thread.message"}), ("done", "[DONE]"))
    ),
    "SSE with an unknown event": lambda a, t, d: validate_sse_stream(
        sse(("thread.message.changed", d), ("done", "[DONE]"))
    ),
    "error without message": lambda a, t, d: validate_response(
        "getAssistant", 404, {"error": {k: v for k, v in ERROR["error"].items() if k != "message"}}
    ),
    "createAssistant with an unknown field": lambda a, t, d: validate_request(
        "createAssistant", {"model": "gpt-4o", "bogus": 1}
    ),
    "createRun with truncation_strategy='foo'": lambda a, t, d: validate_request(
        "createRun", {"assistant_id": "asst_1", "truncation_strategy": "foo"}
    ),
    "search filter with unknown operator": lambda a, t, d: validate_request(
        "searchVectorStore", {"query": "q", "filters": nested_filter("approx")}
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_rejects(
    case: str, assistant: dict[str, Any], thread: dict[str, Any], message_delta: Any
) -> None:
    with pytest.raises(SpecViolation) as caught:
        BROKEN[case](assistant, thread, message_delta)
    assert caught.value.messages, "a violation must say what is wrong"


def test_unknown_names_are_errors_not_passes() -> None:
    with pytest.raises(KeyError):
        validate_response("getAssistent", 200, {})
    with pytest.raises(KeyError):
        validate_schema("AssistantObjekt", {})
    with pytest.raises(KeyError):
        validate_stream_event("thread.run.exploded", {})
    with pytest.raises(KeyError):
        validate_response("getAssistant", 201, {})  # undocumented success status
