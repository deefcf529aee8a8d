"""/v1/assistants through the official SDK; every response is spec-validated by the client hook."""

from __future__ import annotations

import openai
import pytest

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
        "strict": True,
    },
}


def test_create_retrieve_every_field(client: openai.OpenAI) -> None:
    data = client.files.create(file=("data.csv", b"x,y\n1,2\n"), purpose="assistants")
    created = client.beta.assistants.create(
        model="gpt-4o",
        name="Math tutor",
        description="Helps with maths",
        instructions="You are a personal math tutor.",
        tools=[{"type": "code_interpreter"}, {"type": "file_search"}, WEATHER_TOOL],
        tool_resources={"code_interpreter": {"file_ids": [data.id]}},
        metadata={"team": "edu"},
        temperature=0.3,
        top_p=0.9,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
        },
    )
    assert created.id.startswith("asst_") and len(created.id) == len("asst_") + 24
    assert created.object == "assistant"
    fetched = client.beta.assistants.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()
    assert fetched.name == "Math tutor"
    assert fetched.description == "Helps with maths"
    assert fetched.instructions == "You are a personal math tutor."
    assert [t.type for t in fetched.tools] == ["code_interpreter", "file_search", "function"]
    assert fetched.tools[2].function.name == "get_weather"
    assert fetched.tools[2].function.parameters["required"] == ["city"]
    assert fetched.tool_resources.code_interpreter.file_ids == [data.id]
    assert fetched.metadata == {"team": "edu"}
    assert fetched.temperature == pytest.approx(0.3)
    assert fetched.top_p == pytest.approx(0.9)
    assert fetched.response_format.type == "json_schema"
    assert fetched.response_format.json_schema.name == "answer"


def test_defaults(client: openai.OpenAI) -> None:
    assistant = client.beta.assistants.create(model="gpt-4o")
    assert assistant.name is None and assistant.instructions is None
    assert assistant.tools == [] and assistant.metadata == {}
    assert assistant.response_format == "auto"
    assert assistant.temperature == 1.0 and assistant.top_p == 1.0


def test_modify_changes_only_sent_fields(client: openai.OpenAI) -> None:
    assistant = client.beta.assistants.create(
        model="gpt-4o", name="Before", instructions="Keep me", metadata={"a": "1"}
    )
    updated = client.beta.assistants.update(
        assistant.id, name="After", tools=[WEATHER_TOOL], metadata={"b": "2"}, model="fake-model"
    )
    assert updated.name == "After"
    assert updated.instructions == "Keep me"
    assert updated.model == "fake-model"
    assert updated.metadata == {"b": "2"}
    assert updated.tools[0].function.name == "get_weather"
    assert client.beta.assistants.retrieve(assistant.id).model_dump() == updated.model_dump()
    cleared = client.beta.assistants.update(assistant.id, name=None)
    assert cleared.name is None and cleared.instructions == "Keep me"


def test_delete(client: openai.OpenAI) -> None:
    assistant = client.beta.assistants.create(model="gpt-4o")
    deleted = client.beta.assistants.delete(assistant.id)
    assert deleted.id == assistant.id and deleted.deleted and deleted.object == "assistant.deleted"
    with pytest.raises(openai.NotFoundError) as err:
        client.beta.assistants.retrieve(assistant.id)
    assert err.value.body["message"] == f"No assistant found with id '{assistant.id}'."
    with pytest.raises(openai.NotFoundError):
        client.beta.assistants.delete(assistant.id)


def test_list_and_auto_paging(client: openai.OpenAI) -> None:
    marker = "list-test"
    ids = [
        client.beta.assistants.create(model="gpt-4o", metadata={"m": marker}).id for _ in range(7)
    ]
    page = client.beta.assistants.list(limit=3, order="desc")
    assert page.object == "list" if hasattr(page, "object") else True
    assert [a.id for a in page.data] == ids[::-1][:3]
    assert page.has_more
    every = [a.id for a in client.beta.assistants.list(limit=2, order="asc")]
    # Auto-pagination walks `after` cursors across pages in creation order.
    assert [i for i in every if i in ids] == ids
