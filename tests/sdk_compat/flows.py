"""Assistant / thread / message flows run by a *user's* openai SDK (1.x, 2.x or 3.x).

Standalone on purpose: it is executed with `python flows.py BASE_URL` inside a throwaway
environment that holds only the openai package under test, against a running server.
Prints one line per flow and a closing "N passed, N failed" line; exits non-zero on failure.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections.abc import Callable

import openai

warnings.simplefilter("ignore", DeprecationWarning)


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def assistants_flow(client: openai.OpenAI) -> None:
    created = client.beta.assistants.create(
        model="gpt-4o",
        name="compat",
        instructions="Be brief.",
        tools=[
            {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
        ],
        metadata={"sdk": openai.__version__},
    )
    check(created.id.startswith("asst_"), "assistant id prefix")
    fetched = client.beta.assistants.retrieve(created.id)
    check(fetched.name == "compat" and fetched.tools[0].function.name == "lookup", "retrieve")
    updated = client.beta.assistants.update(created.id, name="compat-2")
    check(updated.name == "compat-2" and updated.instructions == "Be brief.", "update")
    listed = [a.id for a in client.beta.assistants.list(limit=100)]
    check(created.id in listed, "list")
    check(client.beta.assistants.delete(created.id).deleted, "delete")
    try:
        client.beta.assistants.retrieve(created.id)
    except openai.NotFoundError as err:
        check("No assistant found" in str(err), "404 message")
    else:
        raise AssertionError("deleted assistant still retrievable")


def threads_flow(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": "first"}], metadata={"k": "v"}
    )
    check(thread.id.startswith("thread_"), "thread id prefix")
    check(client.beta.threads.retrieve(thread.id).metadata == {"k": "v"}, "thread retrieve")
    check(
        client.beta.threads.update(thread.id, metadata={"k": "w"}).metadata == {"k": "w"}, "update"
    )
    message = client.beta.threads.messages.create(
        thread.id,
        role="user",
        content=[
            {"type": "text", "text": "second"},
            {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
        ],
    )
    check(message.content[0].text.value == "second", "message content")
    got = client.beta.threads.messages.retrieve(message.id, thread_id=thread.id)
    check(got.id == message.id, "message retrieve")
    changed = client.beta.threads.messages.update(
        message.id, thread_id=thread.id, metadata={"a": "b"}
    )
    check(changed.metadata == {"a": "b"}, "message update")
    texts = [
        m.content[0].text.value for m in client.beta.threads.messages.list(thread.id, order="asc")
    ]
    check(texts == ["first", "second"], f"message list order: {texts}")
    check(
        client.beta.threads.messages.delete(message.id, thread_id=thread.id).deleted, "msg delete"
    )
    check(client.beta.threads.delete(thread.id).deleted, "thread delete")


def errors_flow(client: openai.OpenAI) -> None:
    try:
        client.beta.assistants.create(model="gpt-4o", temperature=9)
    except openai.BadRequestError as err:
        check(err.status_code == 400, "400 status")
    else:
        raise AssertionError("bad temperature accepted")


def models_flow(client: openai.OpenAI) -> None:
    check(len(client.models.list().data) >= 1, "models list")


FLOWS: list[Callable[[openai.OpenAI], None]] = [
    assistants_flow,
    threads_flow,
    errors_flow,
    models_flow,
]


def main() -> int:
    key = os.environ.get("OPENGROVE_TEST_KEY", "compat")  # a real key on a server with keys
    client = openai.OpenAI(base_url=sys.argv[1], api_key=key, max_retries=0)
    passed = failed = 0
    for flow in FLOWS:
        try:
            flow(client)
        except Exception:
            failed += 1
            print(f"FAIL {flow.__name__} (openai {openai.__version__})")
            traceback.print_exc()
        else:
            passed += 1
            print(f"ok   {flow.__name__} (openai {openai.__version__})")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
