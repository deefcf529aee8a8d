"""A turn's tool calls, once the model is done with them: built-in tools run now, and
function calls wait for the client's outputs (`requires_action`)."""

from __future__ import annotations

import json
from typing import Any

from app.db import Database
from app.llm.adapter import LLMError
from app.runs.events import EventWriter
from app.runs.turn import ToolCallState
from app.tools import ActiveTool


async def settle_tool_calls(
    calls: list[ToolCallState],
    tools: dict[str, ActiveTool],
    db: Database,
    writer: EventWriter,
    step_id: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the built-in ones (their outputs shown in a last step delta). Returns the step's
    tool calls, the calls as the model's next turn sees them, and the function calls the
    client must answer."""
    step_calls: list[dict[str, Any]] = []
    llm_calls: list[dict[str, Any]] = []
    required: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        llm_call: dict[str, Any] = {
            "id": call.id,
            "name": call.name,
            "arguments": call.arguments,
        }
        builtin = tools.get(call.name)
        if builtin is not None:
            async with db.sessionmaker() as session:
                result = await builtin.call(session, call.id, call.arguments)
                await session.commit()
            step_calls.append(result.step_call)
            llm_call["output"] = result.output
            if result.delta is not None:  # e.g. code outputs, in a final delta
                writer.emit_delta(
                    "thread.run.step.delta",
                    {
                        "id": step_id,
                        "object": "thread.run.step.delta",
                        "delta": {
                            "step_details": {
                                "type": "tool_calls",
                                "tool_calls": [{"index": index, **result.delta}],
                            }
                        },
                    },
                )
        else:
            try:
                json.loads(call.arguments or "{}")
            except json.JSONDecodeError as exc:
                # A dropped stream can end mid-arguments; never hand clients broken JSON.
                raise LLMError(
                    "server_error",
                    f"The model returned malformed arguments for tool '{call.name}'.",
                ) from exc
            function = {"name": call.name, "arguments": call.arguments}
            step_calls.append(
                {"id": call.id, "type": "function", "function": {**function, "output": None}}
            )
            required.append({"id": call.id, "type": "function", "function": function})
        llm_calls.append(llm_call)
    return step_calls, llm_calls, required
