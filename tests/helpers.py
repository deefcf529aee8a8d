"""Helpers shared by the run test modules (no fixtures here; those live in conftest.py)."""

from __future__ import annotations

import io
from typing import Any

import openai

from tests.fake_upstream import FakeReply, last_tool_output

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def texts(client: openai.OpenAI, thread_id: str) -> list[tuple[str, str]]:
    """(role, text) of every message in a thread, oldest first."""
    return [
        (m.role, m.content[0].text.value)
        for m in client.beta.threads.messages.list(thread_id, order="asc")
    ]


def upload(client: openai.OpenAI, name: str, text: str) -> Any:
    return client.files.create(file=(name, io.BytesIO(text.encode())), purpose="assistants")


def cite_first_result(body: dict[str, Any]) -> FakeReply:
    """The fake model answers from the file_search output it was given (in any dialect),
    citing its first marker."""
    output = last_tool_output(body)
    marker = output.split("\n")[2]  # "Search results …", blank line, then the first marker
    return FakeReply(text=f"The launch code is in the manual {marker}.")
