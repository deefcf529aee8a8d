"""Races the code once allowed, each run concurrently many times: closed by locks taken in
the database (a thread's row, a vector store's row), never by luck of timing."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import openai
import pytest

from tests.fake_upstream import FakeReply, FakeUpstream
from tests.helpers import upload

TRIALS = 12


def _both(first: Any, second: Any) -> tuple[Any, Any]:
    """Call both at once (two threads, two connections); each returns its result or error."""

    def attempt(call: Any) -> Any:
        try:
            return call()
        except openai.APIStatusError as exc:
            return exc

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.submit(attempt, first), pool.submit(attempt, second)
        return a.result(), b.result()


def test_two_first_attachments_make_one_thread_store(client: openai.OpenAI) -> None:
    before = {s.id for s in client.vector_stores.list(limit=100).data}
    for trial in range(TRIALS):
        thread = client.beta.threads.create()
        files = [upload(client, f"race-{trial}-{n}.txt", f"fact {trial} {n}") for n in (0, 1)]

        def attach(file_id: str, thread_id: str = thread.id) -> Any:
            return lambda: client.beta.threads.messages.create(
                thread_id,
                role="user",
                content="see file",
                attachments=[{"file_id": file_id, "tools": [{"type": "file_search"}]}],
            )

        results = _both(attach(files[0].id), attach(files[1].id))
        assert not any(isinstance(r, Exception) for r in results), results
        stores = client.beta.threads.retrieve(thread.id).tool_resources.file_search
        assert stores is not None and len(stores.vector_store_ids) == 1
        attached = client.vector_stores.files.list(stores.vector_store_ids[0]).data
        assert {f.id for f in attached} == {f.id for f in files}, trial
    made = {s.id for s in client.vector_stores.list(limit=100).data} - before
    assert len(made) == TRIALS  # one store per thread: none orphaned


def test_two_attaches_of_one_file_make_one_store_file(client: openai.OpenAI) -> None:
    for trial in range(TRIALS):
        store = client.vector_stores.create(name=f"race {trial}")
        file = upload(client, f"twice-{trial}.txt", "attached twice at once")

        def attach(store_id: str = store.id, file_id: str = file.id) -> Any:
            return client.vector_stores.files.create(vector_store_id=store_id, file_id=file_id)

        results = _both(attach, attach)
        assert not any(isinstance(r, Exception) for r in results), results
        listed = client.vector_stores.files.list(store.id).data
        assert [f.id for f in listed] == [file.id], trial


def _prompt_with(upstream: FakeUpstream, marker: str) -> str:
    bodies = [json.dumps(body) for body in upstream.requests if marker in json.dumps(body)]
    assert len(bodies) == 1, marker
    return bodies[0]


def test_a_message_never_lands_in_a_thread_while_its_run_is_active(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    """A message created while a run is being created either comes first (and the run's
    model sees it) or is refused: never stored beside an active run it is not part of."""
    assistant = client.beta.assistants.create(model="fake-model")
    accepted = refused = 0
    for trial in range(TRIALS * 2):
        # The model takes a while: the run is still active when the message request is
        # answered, so an accepted message must have come before the run.
        upstream.script(FakeReply(text=f"done {trial}", hang_seconds=0.3))
        start, late = f"start-{trial}", f"late-{trial}"
        thread = client.beta.threads.create(messages=[{"role": "user", "content": start}])
        run, message = _both(
            partial(
                client.beta.threads.runs.create, thread_id=thread.id, assistant_id=assistant.id
            ),
            partial(client.beta.threads.messages.create, thread.id, role="user", content=late),
        )
        assert isinstance(run, openai.types.beta.threads.Run), run
        while client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status not in (
            "completed",
            "failed",
        ):
            pass
        if isinstance(message, openai.BadRequestError):
            assert "while a run" in str(message.body)
            refused += 1
        else:
            assert not isinstance(message, Exception), message
            assert late in _prompt_with(upstream, start), trial  # it came before the run
            accepted += 1
    assert accepted + refused == TRIALS * 2


@pytest.mark.parametrize("count", [600])
def test_the_vector_stores_helper_takes_more_than_500_files(
    client: openai.OpenAI, count: int
) -> None:
    file = upload(client, "many.txt", "one file, named many times over")
    ids = [file.id] * count  # the same file repeated: one row, no 500
    assistant = client.beta.assistants.create(
        model="gpt-4o",
        tools=[{"type": "file_search"}],
        tool_resources={"file_search": {"vector_stores": [{"file_ids": ids}]}},
    )
    store_ids = assistant.tool_resources.file_search.vector_store_ids
    assert len(store_ids) == 1
    assert [f.id for f in client.vector_stores.files.list(store_ids[0]).data] == [file.id]
