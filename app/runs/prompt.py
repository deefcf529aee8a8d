"""What the model sees: the run's instructions, the thread, and this run's own steps,
cut to `max_prompt_tokens` when the run sets it (images are made data URLs afterwards, by
`app.runs.images`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from app.llm.adapter import ChatRequest, count_tokens
from app.llm.routing import ModelRoute
from app.runs import store
from app.runs.images import SOURCE
from app.runs.outcomes import RunIncomplete
from app.runs.store import Row
from app.tools import ActiveTool


def _chat_content(
    parts: list[dict[str, Any]], role: str, message_id: str | None = None
) -> str | list[dict[str, Any]]:
    """Stored message parts → chat content (a plain string when it is text only).

    Images of user messages stay image parts tagged with where they are (`SOURCE`), for
    `PromptImages.inline` to make data URLs; an assistant's images (code_interpreter charts)
    are named in text, as chat APIs take images from users only."""
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"]["value"] for part in parts)
    converted: list[dict[str, Any]] = []
    for index, part in enumerate(parts):
        kind = part["type"]
        if kind == "text":
            converted.append({"type": "text", "text": part["text"]["value"]})
        elif role != "user" or message_id is None:
            if kind == "image_file":
                name = part["image_file"]["file_id"]
            else:
                url = part["image_url"]["url"]
                name = "(inline data)" if url.startswith("data:") else url
            converted.append({"type": "text", "text": f"[{kind.replace('_', ' ')} {name}]"})
        elif kind == "image_url":
            converted.append(
                {
                    "type": "image_url",
                    "image_url": dict(part["image_url"]),
                    SOURCE: f"content[{index}].image_url.url of message {message_id}",
                }
            )
        elif kind == "image_file":
            converted.append(
                {
                    "type": "image_file",
                    "image_file": dict(part["image_file"]),
                    SOURCE: f"content[{index}].image_file of message {message_id}",
                }
            )
    return converted


def build_prompt(conn: Connection, run: Row) -> list[dict[str, Any]]:
    """The chat messages for the run's next model call (a `Database.transact` work function)."""
    prompt: list[dict[str, Any]] = []
    if run.instructions:
        prompt.append({"role": "system", "content": run.instructions})
    # The thread as it was, without what this run itself wrote (that comes from its steps).
    history = store.history(conn, run.thread_id, run.id)
    strategy = run.truncation_strategy or {}
    if strategy.get("type") == "last_messages" and strategy.get("last_messages"):
        history = history[-int(strategy["last_messages"]) :]
    prompt.extend(
        {"role": m.role, "content": _chat_content(m.content, m.role, m.id)} for m in history
    )
    if run.turns:  # a run's first turn has no steps of its own yet
        prompt.extend(_run_turns(conn, run))
    return prompt


def chat_request(
    run: Row,
    prompt: list[dict[str, Any]],
    route: ModelRoute,
    builtin: list[ActiveTool],
    completion_tokens_used: int,
) -> ChatRequest:
    """The model call for the run's next turn: its prompt (fitted to `max_prompt_tokens`),
    its tools (functions and the run's built-in tools), its settings and what is left of
    `max_completion_tokens`."""
    max_tokens = None
    if run.max_prompt_tokens is not None:
        prompt = fit_prompt(route.litellm_model, prompt, run.max_prompt_tokens)
    if run.max_completion_tokens is not None:
        max_tokens = run.max_completion_tokens - completion_tokens_used
        if max_tokens <= 0:
            raise RunIncomplete("max_completion_tokens")
    tools = llm_tools(run.tools) + [tool.definition for tool in builtin]
    return ChatRequest(
        route=route,
        messages=prompt,
        tools=tools,
        tool_choice=llm_tool_choice(run.tool_choice, {t.type: t.name for t in builtin})
        if tools
        else None,
        parallel_tool_calls=run.parallel_tool_calls if tools else None,
        response_format=llm_response_format(run.response_format),
        temperature=run.temperature,
        top_p=run.top_p,
        max_tokens=max_tokens,
    )


def fit_prompt(model: str, prompt: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """Drop the oldest conversation messages until the prompt fits `max_prompt_tokens`."""
    system = [m for m in prompt[:1] if m["role"] == "system"]
    rest = prompt[len(system) :]
    while len(rest) > 1 and count_tokens(model, system + rest) > budget:
        rest = rest[1:]
        # Never start on a tool result whose call was dropped.
        while rest and rest[0]["role"] == "tool":
            rest = rest[1:]
    if count_tokens(model, system + rest) > budget:
        raise RunIncomplete("max_prompt_tokens")
    return system + rest


def _run_turns(conn: Connection, run: Row) -> list[dict[str, Any]]:
    steps = store.run_steps(conn, run.id)
    messages = store.messages_by_id(
        conn,
        [
            s.step_details["message_creation"]["message_id"]
            for s in steps
            if s.type == "message_creation"
        ],
    )
    turns: list[dict[str, Any]] = []
    for step in steps:
        if step.type == "message_creation":
            message = messages.get(step.step_details["message_creation"]["message_id"])
            if message is not None:
                turns.append(
                    {"role": "assistant", "content": _chat_content(message.content, "assistant")}
                )
            continue
        # What the model itself asked for (built-in calls show differently to clients).
        outputs = {
            c["id"]: c["function"].get("output")
            for c in step.step_details.get("tool_calls", [])
            if c.get("type") == "function"
        }
        calls = (step.internal or {}).get("llm_calls", [])
        if not calls:
            continue
        assistant: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for c in calls
            ],
        }
        # Text the model wrote before calling tools belongs to the same assistant turn.
        if turns and turns[-1]["role"] == "assistant" and "tool_calls" not in turns[-1]:
            assistant["content"] = turns.pop()["content"]
        turns.append(assistant)
        for call in calls:
            output = call.get("output", outputs.get(call["id"]))
            if output is not None:
                turns.append({"role": "tool", "tool_call_id": call["id"], "content": output})
    return turns


def llm_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run's function tools in chat-completions form."""
    converted = []
    for tool in tools or []:
        if tool.get("type") != "function":
            continue
        function = {k: v for k, v in tool["function"].items() if v is not None}
        if not function.get("strict"):
            function.pop("strict", None)
        converted.append({"type": "function", "function": function})
    return converted


def llm_tool_choice(choice: Any, builtin: dict[str, str] | None = None) -> Any:
    """`builtin`: the run's built-in tools, type → the function name the model calls."""
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice["function"]["name"]}}
    name = (builtin or {}).get(choice.get("type", ""))
    if name is None and choice.get("type") == "file_search":
        name = "file_search"
    if name is not None:
        return {"type": "function", "function": {"name": name}}
    return "auto"


def llm_response_format(response_format: Any) -> Any:
    if not isinstance(response_format, dict) or response_format.get("type") == "text":
        return None
    return response_format
