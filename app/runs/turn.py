"""One model turn: streamed deltas become an assistant message and/or a tool-calls step.

The first text delta creates the message (and its message_creation step); the first tool-call
delta creates the tool_calls step. Deltas are published at once and persisted with the next
commit; the message and steps become final when the turn closes (`app.runs.execution`).
Rows are plain (`app.runs.store.Row`); what they need written waits in `pending` for the
execution's next commit. They carry the turn's number, so a run resumed after a crash can
drop what an interrupted turn left behind.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import Connection

from app.ids import new_id, next_seq, now
from app.llm.adapter import Finish, ToolCallDelta
from app.runs import store
from app.runs.events import EventWriter
from app.runs.schemas import render_step
from app.runs.store import Row
from app.threads.schemas import MessageObject
from app.tools import ActiveTool


@dataclass
class ToolCallState:
    id: str
    name: str = ""
    arguments: str = ""


@dataclass
class Turn:
    """What one model call produced: an assistant message and/or tool calls."""

    number: int
    message: Row | None = None
    message_step: Row | None = None
    text: list[str] = field(default_factory=list)
    tool_step: Row | None = None
    calls: dict[int, ToolCallState] = field(default_factory=dict)
    finish: Finish | None = None


class TurnRecorder:
    """Turns one model stream's deltas into rows and events."""

    def __init__(
        self,
        writer: EventWriter,
        run: Row,
        tools: dict[str, ActiveTool],
        commit: Callable[[], Awaitable[Any]],
    ) -> None:
        self.writer = writer
        self.run = run
        self.tools = tools
        self.commit = commit
        self.pending: list[Callable[[Connection], None]] = []

    def write_pending(self, conn: Connection) -> None:
        for write in self.pending:
            write(conn)
        self.pending = []

    def new_step(self, turn: Turn, step_type: str, details: dict[str, Any]) -> Row:
        run = self.run
        step = Row(
            id=new_id("step_"),
            created_at=now(),
            seq=next_seq(),
            run_id=run.id,
            thread_id=run.thread_id,
            assistant_id=run.assistant_id,
            type=step_type,
            status="in_progress",
            step_details=details,
            last_error=None,
            expired_at=None,
            cancelled_at=None,
            failed_at=None,
            completed_at=None,
            metadata_={},
            usage=None,
            internal={"turn": turn.number},
        )
        self.pending.append(partial(store.insert_step, step=step))
        self.writer.emit("thread.run.step.created", render_step(step))
        self.writer.emit("thread.run.step.in_progress", render_step(step))
        return step

    async def on_text(self, turn: Turn, text: str) -> None:
        if turn.message is None:
            run = self.run
            message = Row(
                id=new_id("msg_"),
                created_at=now(),
                seq=next_seq(),
                thread_id=run.thread_id,
                role="assistant",
                content=[],
                status="in_progress",
                incomplete_details=None,
                completed_at=None,
                incomplete_at=None,
                assistant_id=run.assistant_id,
                run_id=run.id,
                attachments=[],
                metadata_={},
            )
            turn.message_step = self.new_step(
                turn,
                "message_creation",
                {"type": "message_creation", "message_creation": {"message_id": message.id}},
            )
            self.pending.append(partial(store.insert_message, message=message))
            turn.message = message
            rendered = MessageObject.dump_row(message)  # type: ignore[arg-type]
            self.writer.emit("thread.message.created", rendered)
            self.writer.emit("thread.message.in_progress", rendered)
            await self.commit()
        turn.text.append(text)
        self.writer.emit_delta(
            "thread.message.delta",
            {
                "id": turn.message.id,
                "object": "thread.message.delta",
                "delta": {
                    "content": [
                        {"index": 0, "type": "text", "text": {"value": text, "annotations": []}}
                    ]
                },
            },
        )

    async def on_tool_delta(self, turn: Turn, delta: ToolCallDelta) -> None:
        if turn.message is not None and turn.message.status == "in_progress":
            await self.complete_message(turn, "completed")
        if turn.tool_step is None:
            turn.tool_step = self.new_step(
                turn, "tool_calls", {"type": "tool_calls", "tool_calls": []}
            )
            await self.commit()
        if not self.run.parallel_tool_calls and delta.index not in turn.calls and turn.calls:
            return  # one call per turn was asked for; drop the extras
        call = turn.calls.get(delta.index)
        fresh = call is None
        if call is None:
            # Our own id for every call: upstreams that reuse ids would break clients.
            call = turn.calls[delta.index] = ToolCallState(id=new_id("call_"))
        if delta.name:
            call.name += delta.name
        call.arguments += delta.arguments
        entry: dict[str, Any] = {"index": list(turn.calls).index(delta.index)}
        builtin = self.tools.get(call.name)
        if builtin is not None:
            if fresh:
                self._emit_call_delta(turn, {**entry, **builtin.started(call.id)})
            shown = builtin.arguments_delta(call.id, call.arguments) if delta.arguments else None
            if shown is not None:
                self._emit_call_delta(turn, {**entry, **shown})
            return
        function: dict[str, Any] = {"arguments": delta.arguments}
        entry["type"] = "function"
        if fresh:
            entry["id"] = call.id
            function.update(name=call.name, output=None)
        entry["function"] = function
        self._emit_call_delta(turn, entry)

    def _emit_call_delta(self, turn: Turn, entry: dict[str, Any]) -> None:
        assert turn.tool_step is not None
        self.writer.emit_delta(
            "thread.run.step.delta",
            {
                "id": turn.tool_step.id,
                "object": "thread.run.step.delta",
                "delta": {"step_details": {"type": "tool_calls", "tool_calls": [entry]}},
            },
        )

    async def complete_message(self, turn: Turn, status: str) -> None:
        message, step = turn.message, turn.message_step
        assert message is not None and step is not None
        text = "".join(turn.text)
        # Built-in tools add parts after the text (e.g. charts) and prepare their annotations.
        extra = [part for tool in self.tools.values() for part in await tool.finish_message(text)]
        annotations = [a for tool in self.tools.values() for a in tool.annotate(text)]
        message.content = [
            {"type": "text", "text": {"value": text, "annotations": annotations}},
            *extra,
        ]
        if extra:
            self.writer.emit_delta(
                "thread.message.delta",
                {
                    "id": message.id,
                    "object": "thread.message.delta",
                    "delta": {"content": [{"index": i, **p} for i, p in enumerate(extra, 1)]},
                },
            )
        message.status = status
        if status == "completed":
            message.completed_at = now()
        else:
            message.incomplete_at = now()
            message.incomplete_details = {"reason": "max_tokens"}
        self.pending.append(
            partial(
                store.update_message,
                message=message,
                names=("content", "status", "completed_at", "incomplete_at", "incomplete_details"),
            )
        )
        self.writer.emit(
            f"thread.message.{status}",
            MessageObject.dump_row(message),  # type: ignore[arg-type]
        )
        step.status = "completed"
        step.completed_at = now()
        self.close_step(step, ("status", "completed_at", "usage"))
        self.writer.emit("thread.run.step.completed", render_step(step))

    def close_step(self, step: Row, names: tuple[str, ...]) -> None:
        self.pending.append(partial(store.update_step, step=step, names=names))
