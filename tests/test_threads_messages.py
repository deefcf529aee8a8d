"""/v1/threads and /v1/threads/{id}/messages through the official SDK."""

from __future__ import annotations

import openai
import pytest


def test_thread_lifecycle_with_initial_messages(client: openai.OpenAI) -> None:
    image, doc, data = (
        client.files.create(file=(name, b"bytes"), purpose="assistants").id
        for name in ("a.png", "doc.txt", "data.csv")
    )
    store = client.vector_stores.create(name="thread docs").id
    thread = client.beta.threads.create(
        messages=[
            {"role": "user", "content": "Hello", "metadata": {"n": "1"}},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    {"type": "image_file", "image_file": {"file_id": image, "detail": "low"}},
                ],
                "attachments": [{"file_id": doc, "tools": [{"type": "code_interpreter"}]}],
            },
            {"role": "assistant", "content": "Hi there"},
        ],
        tool_resources={
            "code_interpreter": {"file_ids": [data]},
            "file_search": {"vector_store_ids": [store]},
        },
        metadata={"user": "u1"},
    )
    assert thread.id.startswith("thread_")
    assert thread.metadata == {"user": "u1"}
    assert thread.tool_resources.file_search.vector_store_ids == [store]
    assert client.beta.threads.retrieve(thread.id).model_dump() == thread.model_dump()

    messages = client.beta.threads.messages.list(thread.id, order="asc").data
    assert [m.role for m in messages] == ["user", "user", "assistant"]
    assert messages[0].content[0].text.value == "Hello"
    assert messages[0].content[0].text.annotations == []
    assert messages[0].metadata == {"n": "1"}
    parts = messages[1].content
    assert [p.type for p in parts] == ["text", "image_url", "image_file"]
    assert parts[1].image_url.url == "https://example.com/a.png"
    assert parts[1].image_url.detail == "auto"
    assert parts[2].image_file.file_id == image and parts[2].image_file.detail == "low"
    assert messages[1].attachments[0].file_id == doc
    assert messages[1].attachments[0].tools[0].type == "code_interpreter"
    assert all(m.thread_id == thread.id and m.status == "completed" for m in messages)

    updated = client.beta.threads.update(thread.id, metadata={"user": "u2"})
    assert updated.metadata == {"user": "u2"}
    assert updated.tool_resources.code_interpreter.file_ids == [data]

    deleted = client.beta.threads.delete(thread.id)
    assert deleted.deleted and deleted.object == "thread.deleted"
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.retrieve(thread.id)
    # The cascade took the messages with the thread.
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.retrieve(messages[0].id, thread_id=thread.id)


def test_empty_thread(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create()
    assert thread.metadata == {} and client.beta.threads.messages.list(thread.id).data == []


def test_message_crud(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create()
    message = client.beta.threads.messages.create(
        thread.id, role="user", content="How do I compute 2+2?", metadata={"k": "v"}
    )
    assert message.id.startswith("msg_")
    assert message.run_id is None and message.assistant_id is None
    assert message.completed_at is not None and message.incomplete_at is None
    fetched = client.beta.threads.messages.retrieve(message.id, thread_id=thread.id)
    assert fetched.model_dump() == message.model_dump()
    updated = client.beta.threads.messages.update(
        message.id, thread_id=thread.id, metadata={"k": "w"}
    )
    assert updated.metadata == {"k": "w"}
    assert updated.content[0].text.value == "How do I compute 2+2?"
    deleted = client.beta.threads.messages.delete(message.id, thread_id=thread.id)
    assert deleted.deleted and deleted.object == "thread.message.deleted"
    assert client.beta.threads.messages.list(thread.id).data == []


def test_message_in_another_thread_is_not_found(client: openai.OpenAI) -> None:
    first = client.beta.threads.create(messages=[{"role": "user", "content": "mine"}])
    second = client.beta.threads.create()
    message_id = client.beta.threads.messages.list(first.id).data[0].id
    with pytest.raises(openai.NotFoundError) as err:
        client.beta.threads.messages.retrieve(message_id, thread_id=second.id)
    assert err.value.body["message"] == f"No message found with id '{message_id}'."


def test_message_pagination_is_stable_within_one_second(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create()
    ids = [
        client.beta.threads.messages.create(thread.id, role="user", content=f"m{i}").id
        for i in range(25)
    ]
    first = client.beta.threads.messages.list(thread.id, limit=10)
    assert [m.id for m in first.data] == ids[::-1][:10]
    assert first.has_more and first.first_id == ids[-1] and first.last_id == ids[-10]
    second = client.beta.threads.messages.list(thread.id, limit=10, after=first.last_id)
    assert [m.id for m in second.data] == ids[::-1][10:20]
    third = client.beta.threads.messages.list(thread.id, limit=10, after=second.last_id)
    assert [m.id for m in third.data] == ids[::-1][20:] and not third.has_more
    back = client.beta.threads.messages.list(thread.id, limit=10, before=second.first_id)
    assert [m.id for m in back.data] == ids[::-1][:10]
    asc = client.beta.threads.messages.list(thread.id, limit=5, order="asc", after=ids[2])
    assert [m.id for m in asc.data] == ids[3:8]
    asc_before = client.beta.threads.messages.list(thread.id, limit=3, order="asc", before=ids[5])
    assert [m.id for m in asc_before.data] == ids[2:5]
    assert [m.id for m in client.beta.threads.messages.list(thread.id, order="asc")] == ids


def test_a_threads_own_store_goes_with_it(client: openai.OpenAI) -> None:
    doc = client.files.create(file=("own.txt", b"the thread's own fact"), purpose="assistants")
    thread = client.beta.threads.create(
        messages=[
            {
                "role": "user",
                "content": "read this",
                "attachments": [{"file_id": doc.id, "tools": [{"type": "file_search"}]}],
            }
        ]
    )
    store_id = client.beta.threads.retrieve(thread.id).tool_resources.file_search.vector_store_ids[
        0
    ]
    # A store the thread merely names (made elsewhere) stays.
    shared = client.vector_stores.create(name="shared")
    other = client.beta.threads.create(
        tool_resources={"file_search": {"vector_store_ids": [shared.id]}}
    )
    assert client.vector_stores.retrieve(store_id).id == store_id
    client.beta.threads.delete(thread.id)
    client.beta.threads.delete(other.id)
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(store_id)
    assert client.vector_stores.retrieve(shared.id).id == shared.id
    assert client.files.retrieve(doc.id).id == doc.id  # the file itself stays


def test_a_rendered_message_is_its_schema() -> None:
    """`MessageObject.dump_row` (lists, events) skips the model: it must be what the model
    would dump, field for field and in order."""
    from types import SimpleNamespace

    from app.threads.schemas import MessageObject

    row = SimpleNamespace(
        id="msg_1",
        created_at=1,
        thread_id="thread_1",
        status="incomplete",
        incomplete_details={"reason": "max_tokens"},
        completed_at=None,
        incomplete_at=2,
        role="assistant",
        content=[{"type": "text", "text": {"value": "hi", "annotations": []}}],
        assistant_id="asst_1",
        run_id="run_1",
        attachments=None,
        metadata_=None,
    )
    dumped = MessageObject.dump_row(row)  # type: ignore[arg-type]
    assert list(dumped) == list(MessageObject.model_fields)
    assert MessageObject.model_validate(dumped).model_dump() == dumped
    assert MessageObject.from_row(row).model_dump() == dumped  # type: ignore[arg-type]
    assert dumped["attachments"] == [] and dumped["metadata"] == {}


def test_list_parameters_are_in_the_openapi_document(tmp_path: object) -> None:
    """The cursor parameters are read by hand (`app.pagination.list_params`); the document
    must still list them, once, beside the route's own."""
    from app.config import Settings
    from app.main import create_app

    app = create_app(Settings(data_dir=tmp_path, docs_enabled=True))  # type: ignore[call-arg]
    operation = app.openapi()["paths"]["/v1/threads/{thread_id}/messages"]["get"]
    names = [parameter["name"] for parameter in operation["parameters"]]
    assert sorted(names) == sorted(["thread_id", "run_id", "limit", "order", "after", "before"])
    limit = next(p for p in operation["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 100 and limit["schema"]["minimum"] == 1


def test_a_list_renders_as_pydantic_would() -> None:
    """`ObjectResponse` writes plain objects with orjson and models inside them as
    pydantic-core would (aliases included)."""
    import json

    from pydantic_core import to_json

    from app.schemas import JSONSchemaFormat, ObjectResponse

    schema = JSONSchemaFormat.model_validate({"name": "n", "schema": {"type": "object"}})
    content = {"object": "list", "data": [schema], "ratio": 0.1, "text": "é ✓", "none": None}
    rendered = ObjectResponse(content).body
    assert json.loads(rendered) == json.loads(to_json(content))
    assert json.loads(rendered)["data"][0]["schema"] == {"type": "object"}
