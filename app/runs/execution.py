"""One leased run, from `in_progress` to its next resting state: the turn loop.

Each turn builds the prompt, streams the model's answer into a message and/or tool calls
(`app.runs.turn`), and closes: built-in tools run and the loop continues, function calls stop
the run at `requires_action`, an answer completes it. Every state change goes through
`advance`: one conditional UPDATE, its events, one commit.

A run whose worker died mid-turn is resumed here by the worker that claims it next: the
interrupted turn's message and steps are dropped and the turn is made again (so an answer
is never duplicated); turns closed before the crash, and tool outputs, are kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, update

from app.db import Database
from app.ids import now
from app.llm.adapter import (
    ChatRequest,
    Finish,
    LLMError,
    RetryPolicy,
    TextDelta,
    ToolCallDelta,
    Usage,
    count_tokens,
    stream_chat,
)
from app.llm.routing import ModelRouter
from app.observability import context
from app.observability.metrics import count_run_status
from app.prepared import GuardMissed
from app.runs import store
from app.runs.events import RESERVE_BLOCK, EventHub, EventWriter
from app.runs.images import ImageCache, PromptImages
from app.runs.models import Run
from app.runs.outcomes import RunCancelled, RunIncomplete
from app.runs.prompt import build_prompt, chat_request
from app.runs.schemas import render_run, render_step
from app.runs.service import finish_run
from app.runs.store import Row
from app.runs.tool_calls import settle_tool_calls
from app.runs.turn import Turn, TurnRecorder
from app.tools import ActiveTool, BuiltinTool, activate

logger = logging.getLogger("opengrove.runs")

DELTA_FLUSH_SECONDS = 0.25  # how stale the persisted log may be for remote subscribers
MAX_INTERRUPTIONS = 3  # a run that took its worker down this often is failed


@dataclass(frozen=True)
class ExecutionContext:
    """What every run execution in a process shares."""

    db: Database
    hub: EventHub
    router: ModelRouter
    tools: dict[str, BuiltinTool]
    policy: RetryPolicy
    max_run_steps: int
    expiry_seconds: int
    images: PromptImages  # the prompt's images, made data URLs
    # Told each model turn's tokens, by project (the rate limiter's token budget).
    on_usage: Callable[[str, int], None] | None = None


class RunExecution:
    def __init__(self, ctx: ExecutionContext, run: Row, cancel: asyncio.Event) -> None:
        self.ctx = ctx
        self.db = ctx.db
        self.run = run
        self.cancel = cancel
        self.writer = EventWriter(ctx.hub, run.id, run.next_event_seq, reserving=True)
        self.tools: dict[str, ActiveTool] = {}
        self.recorder = TurnRecorder(self.writer, run, self.tools, self.commit)
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        self.usage.update(run.usage or {})
        self._last_flush = 0.0
        self._images: ImageCache = {}  # this run's downloaded images, for its later turns
        self._prompt: list[dict[str, Any]] | None = None  # read beside the run's start

    async def commit(self, first: Callable[[Connection], bool | None] | None = None) -> bool:
        """One transaction: `first`, then the turn's pending rows and the pending events;
        then publish. When `first` returns False nothing is written and False is returned
        (the pending rows and events wait, for `_end` to drop). On PostgreSQL `first` may be
        a held guard (`store.transition(held=True)`), and the whole commit one statement."""

        def transaction(conn: Connection) -> bool:
            if first is not None and first(conn) is False:
                return False
            self.recorder.write_pending(conn)
            self.writer.write(conn)
            return True

        if not await self.db.transact(transaction):
            return False
        self.writer.published()
        return True

    async def advance(
        self, status: str, event: str | None = None, *, read_prompt: bool = False, **fields: Any
    ) -> bool:
        """Move the run to `status`, announce it, commit; False if the run was not in a
        state that allows it (e.g. cancelled meanwhile). `read_prompt`: read the next turn's
        prompt meanwhile."""
        writer = self.writer
        after = writer.seq + (1 if event else 0)  # the number after this transition's event
        if status != "in_progress":
            writer.release()  # at rest, the next writer numbers on from exactly here
            next_seq = after
        else:
            next_seq = max(writer.stored_next, after + RESERVE_BLOCK)

        stored_next = writer.stored_next

        def move(conn: Connection) -> bool:
            values = {**fields, "next_event_seq": next_seq}
            if not store.transition(conn, self.run, status, values, held=True):
                return False
            writer.stored_next = next_seq
            if event:
                writer.emit(event, render_run(self.run))  # type: ignore[arg-type]
            return True

        # The prompt is read beside the transition, on a connection of its own: the thread
        # cannot change while its run is active, and under load each trip to the database
        # waits its turn on the event loop, so two at once take about as long as one.
        reading = (
            asyncio.ensure_future(self.db.transact(build_prompt, self.run, writes=False))
            if read_prompt
            else None
        )
        try:
            moved = await self.commit(move)
        except GuardMissed:
            # The run changed meanwhile (e.g. cancelled): nothing was written.
            writer.discard_unpublished()
            writer.stored_next = stored_next
            await self.db.transact(store.reload_run, self.run, writes=False)
            moved = False
        except BaseException:
            if reading is not None:  # let it end by itself; what it read is not wanted
                reading.add_done_callback(lambda done: done.cancelled() or done.exception())
            raise
        self._prompt = await reading if reading is not None else None
        if moved:
            count_run_status(status)
        else:
            self._prompt = None
        return moved

    # ---- the run -----------------------------------------------------------------------

    async def execute(self) -> None:
        run = self.run
        # The run's own task: every log line it writes names the run and its project.
        context.run_id.set(run.id)
        context.project_id.set(run.project_id)
        try:
            if run.status == "cancelling" or self.cancel.is_set():
                raise RunCancelled()
            if run.status == "in_progress":
                await self._resume_interrupted()
            elif not await self.advance(
                "in_progress",
                "thread.run.in_progress",
                read_prompt=True,
                started_at=run.started_at or now(),
                expires_at=now() + self.ctx.expiry_seconds,
            ):
                if run.status == "cancelling":  # cancelled between our claim and now
                    raise RunCancelled()
                return
            await self._prepare_tools()
            await self._loop()
        except RunCancelled:
            await self._end("cancelled")
        except RunIncomplete as exc:
            await self._end("incomplete", incomplete_details={"reason": exc.reason})
        except LLMError as exc:
            await self._end("failed", last_error={"code": exc.code, "message": exc.message})
        except asyncio.CancelledError:
            # The server is stopping (not dying): leave the run to be resumed, not failed.
            await asyncio.shield(self._hand_back())
            raise
        except Exception:
            logger.exception("run %s failed", run.id)
            await self._end(
                "failed",
                last_error={
                    "code": "server_error",
                    "message": "The server had an error while processing this run.",
                },
            )

    async def _hand_back(self) -> None:
        """On shutdown: give the lease up at once, so the next worker (this server restarted,
        or another) resumes the run without waiting; a run handed back is no interruption."""
        run = self.run

        def hand_back(conn: Connection) -> None:
            conn.execute(
                update(store.RUNS)
                .where(store.RUNS.c.id == run.id, store.RUNS.c.lease_owner == run.lease_owner)
                .values(lease_owner=None, lease_expires_at=0.0)
            )

        try:
            await self.db.transact(hand_back)
        except Exception:
            logger.exception("run %s: could not hand the run back", self.run.id)

    async def _resume_interrupted(self) -> None:
        run = self.run
        if run.interruptions >= MAX_INTERRUPTIONS:
            logger.warning("run %s interrupted %d times: failing it", run.id, run.interruptions)
            raise LLMError(
                "server_error",
                f"The run was interrupted {run.interruptions} times: the worker executing it "
                "stopped each time.",
            )
        logger.info("run %s: resuming after an interruption", run.id)
        self.writer.resumed_marker()
        await self.commit(lambda conn: store.drop_unfinished_turn(conn, run))

    async def _end(self, status: str, **fields: Any) -> None:
        fields.setdefault("usage", self.usage if self.usage["total_tokens"] else None)
        self.recorder.pending = []  # drop anything half-done by the failed step
        self.writer.discard_unpublished()
        self.writer.release()
        async with self.db.sessionmaker() as session:
            run = await session.get(Run, self.run.id)
            if run is None:
                return
            if status == "cancelled" and run.status == "cancelling":
                self.writer.emit("thread.run.cancelling", render_run(run))
            done = await finish_run(session, run, self.writer, status, **fields)
            cancelling = run.status == "cancelling"
        if not done and status != "cancelled" and cancelling:
            await self._end("cancelled")

    async def _prepare_tools(self) -> None:
        """The run's built-in tools, and the calls they made in earlier turns."""
        run = self.run
        if not any(t.get("type") in self.ctx.tools for t in run.tools or []):
            return
        earlier: list[dict[str, Any]] = []
        if run.turns:
            steps = await self.db.transact(store.run_steps, run.id, writes=False)
            earlier = [
                call
                for step in steps
                if step.type == "tool_calls"
                for call in step.step_details.get("tool_calls", [])
            ]
        async with self.db.sessionmaker() as session:
            self.tools.update(await activate(self.ctx.tools, session, run, earlier))

    async def _loop(self) -> None:
        for _ in range(self.ctx.max_run_steps):
            prompt, self._prompt = self._prompt, None
            if prompt is None:
                prompt = await self.db.transact(build_prompt, self.run, writes=False)
            request = chat_request(
                self.run,
                prompt,
                self.ctx.router.route(self.run.model),
                list(self.tools.values()),
                self.usage["completion_tokens"],
            )
            request.messages = await self.ctx.images.inline_unless_cancelled(
                request.messages, self.run.project_id, self._images, self.cancel
            )
            turn = Turn(number=self.run.turns)
            await self._stream_turn(request, turn)
            if not await self._close_turn(turn, request):
                return
        raise RunIncomplete("max_completion_tokens")

    async def _stream_turn(self, request: ChatRequest, turn: Turn) -> None:
        stream = stream_chat(request, self.ctx.policy).__aiter__()
        writer = self.writer
        self._last_flush = time.monotonic()
        # A cancel interrupts the wait for the model's next chunk, never a commit: the task
        # is cancelled only while it reads. (Reading in a task of its own per chunk, raced
        # with the cancel, cost two turns of the event loop per chunk.)
        task = asyncio.current_task()
        assert task is not None
        reading = interrupted = False

        def interrupt(_: object) -> None:
            nonlocal interrupted
            if reading and not interrupted:
                interrupted = True
                task.cancel()

        watcher = asyncio.ensure_future(self.cancel.wait())
        watcher.add_done_callback(interrupt)
        try:
            while True:
                if self.cancel.is_set():
                    raise RunCancelled()
                reading = True
                try:
                    item = await anext(stream)
                except StopAsyncIteration:
                    if interrupted:  # the stream swallowed the cancel and ended
                        task.uncancel()
                        raise RunCancelled() from None
                    return
                except asyncio.CancelledError:
                    if interrupted and task.uncancel() == 0:
                        raise RunCancelled() from None
                    raise  # the server is stopping (too)
                finally:
                    reading = False
                if isinstance(item, TextDelta):
                    await self.recorder.on_text(turn, item.text)
                elif isinstance(item, ToolCallDelta):
                    await self.recorder.on_tool_delta(turn, item)
                else:
                    turn.finish = item
                if writer.must_commit or (
                    writer.has_unpersisted
                    and time.monotonic() - self._last_flush > DELTA_FLUSH_SECONDS
                ):
                    self._last_flush = time.monotonic()
                    await self.commit()
        finally:
            watcher.remove_done_callback(interrupt)
            watcher.cancel()
            await stream.aclose()

    async def _close_turn(self, turn: Turn, request: ChatRequest) -> bool:
        """Make the turn's message and steps final; True when the loop goes on."""
        run = self.run
        finish = turn.finish or Finish("stop", None)
        usage = finish.usage or Usage(
            # The provider sent no usage: estimate it from what was sent and received.
            count_tokens(run.model, request.messages),
            count_tokens(run.model, [{"content": "".join(turn.text)}]),
        )
        step_usage = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }
        self.usage = {key: self.usage[key] + step_usage[key] for key in step_usage}
        if self.ctx.on_usage is not None:
            self.ctx.on_usage(self.run.project_id, step_usage["total_tokens"])
        truncated = finish.finish_reason == "length"
        if turn.message is not None and turn.message.status == "in_progress":
            assert turn.message_step is not None
            turn.message_step.usage = step_usage
            await self.recorder.complete_message(
                turn, "incomplete" if truncated and not turn.calls else "completed"
            )
        if turn.calls and not truncated:
            return await self._close_tool_turn(turn, step_usage)
        if truncated:
            raise RunIncomplete("max_completion_tokens")
        if not await self.advance(
            "completed", "thread.run.completed", usage=self.usage, turns=turn.number + 1
        ):
            raise RunCancelled()
        return False

    async def _close_tool_turn(self, turn: Turn, step_usage: dict[str, int]) -> bool:
        """Run built-in tools now; stop at requires_action if the model called functions."""
        run = self.run
        step = turn.tool_step
        assert step is not None
        step_calls, llm_calls, required = await settle_tool_calls(
            list(turn.calls.values()), self.tools, self.db, self.writer, step.id
        )
        step.usage = step_usage
        step.step_details = {"type": "tool_calls", "tool_calls": step_calls}
        step.internal = {"turn": turn.number, "llm_calls": llm_calls}
        if not required:
            step.status = "completed"
            step.completed_at = now()
            self.recorder.close_step(
                step, ("status", "completed_at", "usage", "step_details", "internal")
            )
            self.writer.emit("thread.run.step.completed", render_step(step, run.include))
            run.usage = self.usage
            run.turns = turn.number + 1
            await self.commit(
                lambda conn: store.update_run(
                    conn, run.id, {"usage": run.usage, "turns": run.turns}
                )
            )
            return True
        self.recorder.close_step(step, ("usage", "step_details", "internal"))
        action = {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": required}}
        if not await self.advance(
            "requires_action",
            "thread.run.requires_action",
            required_action=action,
            usage=self.usage,
            turns=turn.number + 1,
            expires_at=now() + self.ctx.expiry_seconds,
        ):
            raise RunCancelled()
        return False
