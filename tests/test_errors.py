"""Bad input gets OpenAI's status and error body, and leaves stored data unchanged."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.fixture
def assistant(http: httpx.Client) -> dict[str, Any]:
    response = http.post(
        "/assistants",
        json={"model": "gpt-4o", "name": "Stable", "temperature": 0.5, "metadata": {"k": "v"}},
    )
    assert response.status_code == 200
    return response.json()


BAD_ASSISTANT_BODIES: list[tuple[dict[str, Any], str | None, str]] = [
    ({"name": 123}, "name", "Invalid type for 'name': expected a string, but got an integer"),
    ({"temperature": 3}, "temperature", "Expected a value <= 2"),
    ({"temperature": "hot"}, "temperature", "expected a number"),
    ({"top_p": 1.5}, "top_p", "Expected a value <= 1"),
    ({"name": "x" * 257}, "name", "maximum length 256"),
    ({"description": "x" * 513}, "description", "maximum length 512"),
    ({"instructions": "x" * 256_001}, "instructions", "maximum length 256000"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "at most 16 properties"),
    ({"metadata": {"k" * 65: "v"}}, "metadata", "key too long"),
    ({"metadata": {"k": "v" * 513}}, "metadata", "maximum length 512"),
    ({"metadata": {"k": 1}}, "metadata.k", "expected a string"),
    ({"tools": [{"type": "code_interpreter"}] * 129}, "tools", "maximum length 128"),
    ({"tools": [{"type": "web_browser"}]}, "tools[0]", "Invalid value"),
    (
        {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
        "tools[0].function.name",
        "Invalid",
    ),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 12}}}]},
        "tools[0].function.parameters",
        "Invalid schema for function parameters",
    ),
    ({"response_format": {"type": "xml"}}, "response_format", "Invalid"),
    ({"bogus_field": 1}, "bogus_field", "Unrecognized request argument supplied: bogus_field"),
]


@pytest.mark.parametrize(("patch", "param", "message"), BAD_ASSISTANT_BODIES)
def test_bad_assistant_input(
    http: httpx.Client,
    assistant: dict[str, Any],
    patch: dict[str, Any],
    param: str | None,
    message: str,
) -> None:
    created = http.post("/assistants", json={"model": "gpt-4o", **patch})
    error = error_of(created, 400)
    assert error["type"] == "invalid_request_error"
    assert message in error["message"], error
    assert error["param"] == param
    modified = http.post(f"/assistants/{assistant['id']}", json=patch)
    assert error_of(modified, 400)["param"] == param
    # Nothing stored changed.
    assert http.get(f"/assistants/{assistant['id']}").json() == assistant


def test_missing_required(http: httpx.Client) -> None:
    error = error_of(http.post("/assistants", json={"name": "no model"}), 400)
    assert error["message"] == "Missing required parameter: 'model'."
    assert error["param"] == "model" and error["code"] == "missing_required_parameter"


def test_malformed_json_and_wrong_body_type(http: httpx.Client, assistant: dict[str, Any]) -> None:
    before = http.get("/assistants", params={"limit": 100}).json()["data"]
    response = http.post(
        "/assistants", content=b'{"model": "gpt-4o",', headers={"content-type": "application/json"}
    )
    assert "could not parse the JSON body" in error_of(response, 400)["message"]
    bad_modify = http.post(
        f"/assistants/{assistant['id']}",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    error_of(bad_modify, 400)
    error_of(http.post("/assistants", json=["model"]), 400)
    assert http.get("/assistants", params={"limit": 100}).json()["data"] == before


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("GET", "/assistants/asst_missing", "No assistant found with id 'asst_missing'."),
        ("POST", "/assistants/asst_missing", "No assistant found with id 'asst_missing'."),
        ("DELETE", "/assistants/asst_missing", "No assistant found with id 'asst_missing'."),
        ("GET", "/threads/thread_missing", "No thread found with id 'thread_missing'."),
        ("DELETE", "/threads/thread_missing", "No thread found with id 'thread_missing'."),
        ("GET", "/threads/thread_missing/messages", "No thread found with id 'thread_missing'."),
        ("POST", "/threads/thread_missing/messages", "No thread found with id 'thread_missing'."),
    ],
)
def test_unknown_ids(http: httpx.Client, method: str, path: str, message: str) -> None:
    body = (
        {"role": "user", "content": "hi"} if path.endswith("messages") and method == "POST" else {}
    )
    response = http.request(method, path, json=body if method == "POST" else None)
    error = error_of(response, 404)
    assert error["message"] == message and error["type"] == "invalid_request_error"


def test_unknown_routes_and_methods(http: httpx.Client) -> None:
    assert (
        error_of(http.get("/no-such-thing"), 404)["message"]
        == "Invalid URL (GET /v1/no-such-thing)"
    )
    assert "Invalid URL" in error_of(http.put("/assistants", json={}), 405)["message"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"order": "sideways"}, "order"),
        ({"limit": "many"}, "limit"),
        ({"after": "asst_nope"}, "after"),
    ],
)
def test_bad_list_params(http: httpx.Client, params: dict[str, Any], param: str) -> None:
    assert error_of(http.get("/assistants", params=params), 400)["param"] == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"role": "system", "content": "hi"}, "role"),
        ({"role": "user", "content": ""}, "content"),
        ({"role": "user", "content": []}, "content"),
        ({"role": "user"}, "content"),
        ({"role": "user", "content": [{"type": "audio", "audio": "x"}]}, "content[0]"),
        (
            {"role": "user", "content": "hi", "attachments": [{"tools": []}]},
            "attachments[0].file_id",
        ),
        ({"role": "user", "content": "hi", "metadata": {"x": 1}}, "metadata.x"),
    ],
)
def test_bad_messages_leave_thread_unchanged(
    http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    thread = http.post("/threads", json={"messages": [{"role": "user", "content": "keep"}]}).json()
    before = http.get(f"/threads/{thread['id']}/messages").json()
    error = error_of(http.post(f"/threads/{thread['id']}/messages", json=body), 400)
    assert error["param"] == param, error
    # A thread created with one bad message is not created at all.
    error_of(
        http.post("/threads", json={"messages": [{"role": "user", "content": "ok"}, body]}), 400
    )
    assert http.get(f"/threads/{thread['id']}/messages").json() == before


def test_thread_tool_resources_validated(http: httpx.Client) -> None:
    error = error_of(
        http.post(
            "/threads", json={"tool_resources": {"file_search": {"vector_store_ids": ["a", "b"]}}}
        ),
        400,
    )
    assert error["param"] == "tool_resources.file_search.vector_store_ids"


def test_sdk_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.assistants.create(model="gpt-4o", temperature=5)
    assert err.value.status_code == 400 and err.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.list("thread_nope")
