"""The file_search tool inside runs: the model searches the assistant's and thread's vector
stores, the step records the results, and the answer cites the right file."""

from __future__ import annotations

import openai
import pytest

from tests.fake_upstream import FakeReply, FakeToolCall, FakeUpstream
from tests.helpers import cite_first_result, upload


def test_file_search_run_cites_the_right_file(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    manual = upload(client, "manual.md", "The launch code is AZURE-HERON-42. Keep it secret.")
    other = upload(client, "recipes.txt", "Bake the bread at 220 degrees for forty minutes.")
    store = client.vector_stores.create(name="docs")
    batch = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id, file_ids=[manual.id, other.id], poll_interval_ms=50
    )
    assert batch.file_counts.completed == 2, batch
    assistant = client.beta.assistants.create(
        model="fake-model",
        tools=[{"type": "file_search", "file_search": {"max_num_results": 5}}],
        tool_resources={"file_search": {"vector_store_ids": [store.id]}},
    )
    upstream.script(
        FakeReply(tool_calls=[FakeToolCall("file_search", {"queries": ["launch code"]})]),
        cite_first_result,
    )
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": "What is the launch code?"}]},
        poll_interval_ms=50,
    )
    assert run.status == "completed", run.last_error
    # The model was offered the search tool and read the matching chunk.
    first = upstream.requests[0]
    assert any(t["function"]["name"] == "file_search" for t in first["tools"])
    tool_message = upstream.requests[1]["messages"][-1]
    assert tool_message["role"] == "tool" and "AZURE-HERON-42" in tool_message["content"]

    message = client.beta.threads.messages.list(run.thread_id, run_id=run.id).data[0]
    text = message.content[0].text
    assert text.annotations, text
    citation = text.annotations[0]
    assert citation.type == "file_citation" and citation.file_citation.file_id == manual.id
    assert text.value[citation.start_index : citation.end_index] == citation.text

    steps = client.beta.threads.runs.steps.list(
        run_id=run.id, thread_id=run.thread_id, order="asc"
    ).data
    call = steps[0].step_details.tool_calls[0]
    assert call.type == "file_search"
    assert call.file_search.results[0].file_id == manual.id
    # Result content only with include[].
    assert not call.file_search.results[0].content
    included = client.beta.threads.runs.steps.retrieve(
        steps[0].id,
        thread_id=run.thread_id,
        run_id=run.id,
        include=["step_details.tool_calls[*].file_search.results[*].content"],
    )
    assert (
        "AZURE-HERON-42"
        in included.step_details.tool_calls[0].file_search.results[0].content[0].text
    )


def test_message_attachments_fill_the_threads_own_store(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    notes = upload(client, "notes.txt", "The meeting moved to Thursday at the lighthouse.")
    assistant = client.beta.assistants.create(model="fake-model", tools=[{"type": "file_search"}])
    thread = client.beta.threads.create(
        messages=[
            {
                "role": "user",
                "content": "Where is the meeting?",
                "attachments": [{"file_id": notes.id, "tools": [{"type": "file_search"}]}],
            }
        ]
    )
    store_ids = client.beta.threads.retrieve(thread.id).tool_resources.file_search.vector_store_ids
    assert len(store_ids) == 1
    store = client.vector_stores.retrieve(store_ids[0])
    assert store.expires_after.days == 7
    upstream.script(
        FakeReply(tool_calls=[FakeToolCall("file_search", {"queries": ["meeting location"]})]),
        cite_first_result,
    )
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
    )
    assert run.status == "completed", run.last_error
    files = client.vector_stores.files.list(store_ids[0]).data
    assert "lighthouse" in upstream.requests[1]["messages"][-1]["content"], [
        (f.status, f.last_error) for f in files
    ]
    answer = client.beta.threads.messages.list(thread.id, run_id=run.id).data[0].content[0].text
    assert answer.annotations[0].file_citation.file_id == notes.id
    # A second attachment extends the same store.
    extra = upload(client, "extra.txt", "Bring the blue lantern.")
    client.beta.threads.messages.create(
        thread.id,
        role="user",
        content="And this?",
        attachments=[{"file_id": extra.id, "tools": [{"type": "file_search"}]}],
    )
    files = client.vector_stores.files.list(store_ids[0]).data
    assert {f.id for f in files} == {notes.id, extra.id}


def test_unknown_attachment_is_rejected_and_nothing_is_written(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create()
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.create(
            thread.id,
            role="user",
            content="x",
            attachments=[{"file_id": "file-missing", "tools": [{"type": "file_search"}]}],
        )
    assert client.beta.threads.messages.list(thread.id).data == []
    assert client.beta.threads.retrieve(thread.id).tool_resources.file_search is None


def test_vector_stores_helper_creates_a_store(client: openai.OpenAI) -> None:
    guide = upload(client, "guide.md", "The spare key hangs behind the red door.")
    assistant = client.beta.assistants.create(
        model="fake-model",
        tools=[{"type": "file_search"}],
        tool_resources={
            "file_search": {
                "vector_stores": [{"file_ids": [guide.id], "metadata": {"made": "inline"}}]
            }
        },
    )
    (store_id,) = assistant.tool_resources.file_search.vector_store_ids
    store = client.vector_stores.retrieve(store_id)
    assert store.metadata == {"made": "inline"}
    assert [f.id for f in client.vector_stores.files.list(store_id).data] == [guide.id]
    with pytest.raises(openai.NotFoundError):
        client.beta.assistants.create(
            model="fake-model",
            tool_resources={"file_search": {"vector_stores": [{"file_ids": ["file-nope"]}]}},
        )
