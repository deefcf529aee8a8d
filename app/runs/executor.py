"""The run executor: claims queued runs and drives each through the model until it ends.

One execution path for polled and streamed runs alike: the executor writes state to the
database and events to the run's log; streaming is only a subscriber. A worker holds a
lease on each run it executes and renews it; a run whose lease lapses (its worker died)
is failed with a reason by whichever worker notices, so no run stays in progress forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.assistants.models import Assistant
from app.config import Settings
from app.db import Database
from app.ids import new_id, now
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
from app.retrieval.embeddings import Embedder
from app.retrieval.index import VectorIndex
from app.runs.events import EventHub, EventWriter
from app.runs.models import Run, RunStep
from app.runs.prompt import build_prompt, llm_response_format, llm_tool_choice, llm_tools
from app.runs.schemas import render_run, render_step
from app.runs.service import finish_run
from app.runs.state import transition
from app.threads.models import Message, Thread
from app.threads.schemas import MessageObject
from app.tools.file_search import DEFINITION as FILE_SEARCH_DEFINITION
from app.tools.file_search import TOOL_NAME as FILE_SEARCH
from app.tools.file_search import FileSearchSettings, citations, run_file_search
from app.vector_stores.thread_stores import wait_for_ingestion

logger = logging.getLogger("opengrove.executor")

DELTA_FLUSH_SECONDS = 0.25
INGESTION_PATIENCE_SECONDS = 60.0  # how stale the persisted log may be for remote subscribers


class RunCancelled(Exception):
    pass


class RunIncomplete(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ToolCallState:
    id: str
    name: str = ""
    arguments: str = ""


@dataclass
class Turn:
    """What one model call produced: an assistant message and/or tool calls."""

    message: Message | None = None
    message_step: RunStep | None = None
    text: list[str] = field(default_factory=list)
    tool_step: RunStep | None = None
    calls: dict[int, ToolCallState] = field(default_factory=dict)
    finish: Finish | None = None


class RunExecutor:
    def __init__(
        self,
        db: Database,
        hub: EventHub,
        settings: Settings,
        router: ModelRouter,
        index: VectorIndex | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.db = db
        self.hub = hub
        self.settings = settings
        self.router = router
        self.index = index  # file_search is offered to models only when there is an index
        self.embedder = embedder
        self.worker_id = new_id("wrk_")
        self.policy = RetryPolicy(
            attempts=settings.llm_attempts,
            base_delay=settings.llm_retry_base_delay,
            timeout=settings.llm_timeout,
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancel: dict[str, asyncio.Event] = {}
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._offered: set[str] = set()  # leased to us as they are created, not yet committed
        self._handed: list[str] = []  # committed and ours: start without claiming
        hub.on_run_queued(self._run_queued)
        hub.set_local_worker(self._take, self._offered.discard)
        hub.on_cancel_requested(self._on_cancel_requested)

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.recover()
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="run-claim"),
            asyncio.create_task(self._maintenance_loop(), name="run-maintenance"),
        ]
        logger.info(
            "run executor %s started (concurrency %d)",
            self.worker_id,
            self.settings.worker_concurrency,
        )

    async def stop(self) -> None:
        for task in self._loops:
            task.cancel()
        running = list(self._tasks.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*self._loops, *running, return_exceptions=True)

    def _on_cancel_requested(self, run_id: str) -> None:
        event = self._cancel.get(run_id)
        if event is not None:
            event.set()

    # ---- claiming --------------------------------------------------------------------

    def _take(self, run: Run) -> bool:
        busy = len(self._tasks) + len(self._handed) + len(self._offered)
        if busy >= self.settings.worker_concurrency:
            return False
        run.lease_owner = self.worker_id
        run.lease_expires_at = time.time() + self.settings.run_lease_seconds
        self._offered.add(run.id)
        return True

    def _run_queued(self, run_id: str) -> None:
        if run_id in self._offered:
            self._offered.discard(run_id)
            self._handed.append(run_id)
        self._wake.set()

    async def _claim_loop(self) -> None:
        while True:
            self._wake.clear()
            claimed, self._handed = self._handed, []
            try:
                free = self.settings.worker_concurrency - len(self._tasks) - len(claimed)
                claimed += await self.claim(free) if free > 0 else []
            except Exception:
                logger.exception("claiming runs failed")
            for run_id in claimed:
                self._cancel[run_id] = asyncio.Event()
                self._tasks[run_id] = asyncio.create_task(self._execute(run_id), name=run_id)
            if claimed and len(claimed) >= free:
                continue  # there may be more waiting than we had room for
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            except TimeoutError:
                pass

    async def claim(self, limit: int) -> list[str]:
        """Lease up to `limit` queued runs, oldest first."""
        candidates = (
            select(Run.id)
            .where(Run.status == "queued", Run.lease_owner.is_(None))
            .order_by(Run.seq)
            .limit(limit)
        )
        values = {
            "lease_owner": self.worker_id,
            "lease_expires_at": time.time() + self.settings.run_lease_seconds,
        }
        return [row[0] for row in await self.db.lease(Run.id, candidates, values, [Run.id])]

    # ---- maintenance: leases, cancellation from other processes, expiry, recovery ----

    async def _maintenance_loop(self) -> None:
        last_renewal = 0.0
        while True:
            await asyncio.sleep(0.5)
            try:
                if self._tasks:
                    await self._poll_cancellations()
                if time.monotonic() - last_renewal > self.settings.run_lease_seconds / 3:
                    last_renewal = time.monotonic()
                    await self._renew_leases()
                    await self.recover()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("run maintenance failed")

    async def _poll_cancellations(self) -> None:
        async with self.db.sessionmaker() as session:
            ids = (
                await session.scalars(
                    select(Run.id).where(Run.id.in_(list(self._tasks)), Run.status == "cancelling")
                )
            ).all()
        for run_id in ids:
            self._on_cancel_requested(run_id)

    async def _renew_leases(self) -> None:
        if not self._tasks:
            return
        async with self.db.sessionmaker() as session:
            await session.execute(
                update(Run)
                .where(Run.lease_owner == self.worker_id, Run.id.in_(list(self._tasks)))
                .values(lease_expires_at=time.time() + self.settings.run_lease_seconds)
                .execution_options(synchronize_session=False)
            )
            await session.commit()

    async def recover(self) -> None:
        """End runs whose worker vanished, and runs past their expiry."""
        stamp = time.time()
        async with self.db.sessionmaker() as session:
            lost = (
                await session.scalars(
                    select(Run).where(
                        Run.status.in_(("queued", "in_progress", "cancelling")),
                        Run.lease_owner.is_not(None),
                        Run.lease_expires_at < stamp,
                    )
                )
            ).all()
            expired = (
                await session.scalars(
                    select(Run).where(
                        Run.status.in_(("queued", "requires_action")),
                        Run.lease_owner.is_(None),
                        Run.expires_at < now(),
                    )
                )
            ).all()
            for run in lost:
                await self._end_lost_run(session, run)
            for run in expired:
                await finish_run(
                    session,
                    run,
                    await EventWriter.resume(self.hub, session, run.id),
                    "expired",
                    step_status="expired",
                    message_reason="run_expired",
                )

    async def _end_lost_run(self, session: AsyncSession, run: Run) -> None:
        writer = await EventWriter.resume(self.hub, session, run.id)
        if run.status == "queued":
            # Claimed but never started: give it back to the queue.
            await session.execute(
                update(Run)
                .where(Run.id == run.id, Run.status == "queued")
                .values(lease_owner=None, lease_expires_at=None)
                .execution_options(synchronize_session=False)
            )
            await writer.commit(session, run_queued=True)
            return
        if run.status == "cancelling":
            await finish_run(
                session,
                run,
                writer,
                "cancelled",
                step_status="cancelled",
                message_reason="run_cancelled",
            )
            return
        logger.warning("run %s lost its worker (lease expired); failing it", run.id)
        await finish_run(
            session,
            run,
            writer,
            "failed",
            step_status="failed",
            message_reason="run_failed",
            last_error={
                "code": "server_error",
                "message": "The worker executing this run stopped before it finished.",
            },
        )

    # ---- execution -------------------------------------------------------------------

    async def _execute(self, run_id: str) -> None:
        try:
            async with self.db.sessionmaker() as session:
                await RunExecution(self, session, run_id, self._cancel[run_id]).execute()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("run %s: executor error", run_id)
        finally:
            at_capacity = len(self._tasks) >= self.settings.worker_concurrency
            self._tasks.pop(run_id, None)
            self._cancel.pop(run_id, None)
            if at_capacity:
                self._wake.set()  # a slot opened: look for runs that waited for one


class RunExecution:
    """One claimed run, from in_progress to its next resting state."""

    def __init__(
        self, executor: RunExecutor, session: AsyncSession, run_id: str, cancel: asyncio.Event
    ) -> None:
        self.executor = executor
        self.session = session
        self.run_id = run_id
        self.cancel = cancel
        self.settings = executor.settings
        self.run: Run
        self.writer: EventWriter
        self._last_flush = 0.0
        self.file_search: FileSearchSettings | None = None
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        self.searches: list[list[dict[str, Any]]] = []  # file_search results, in run order

    async def execute(self) -> None:
        session = self.session
        run = await session.get(Run, self.run_id)
        if run is None or run.lease_owner != self.executor.worker_id:
            return
        self.run = run
        self.usage = {**self.usage, **(run.usage or {})}
        self.writer = await EventWriter.resume(self.executor.hub, session, run.id)
        if run.status == "cancelling" or self.cancel.is_set():
            await self._end("cancelled")
            return
        if not await transition(
            session,
            run,
            "in_progress",
            started_at=run.started_at or now(),
            expires_at=now() + self.settings.run_expiry_seconds,
        ):
            if run.status == "cancelling":  # cancelled between our claim and now
                await self._end("cancelled")
            return
        self.writer.emit("thread.run.in_progress", render_run(run))
        await self.writer.commit(session)
        try:
            await self._load_tool_context()
            await self._loop()
        except RunCancelled:
            await self._end("cancelled")
        except RunIncomplete as exc:
            await self._end("incomplete", incomplete_details={"reason": exc.reason})
        except LLMError as exc:
            await self._end("failed", last_error={"code": exc.code, "message": exc.message})
        except asyncio.CancelledError:
            # The server is shutting down mid-run: say so rather than leave it hanging.
            await asyncio.shield(
                self._end(
                    "failed",
                    last_error={
                        "code": "server_error",
                        "message": "The server shut down while the run was in progress.",
                    },
                )
            )
            raise
        except Exception as exc:
            logger.exception("run %s failed", run.id)
            await self._end(
                "failed", last_error={"code": "server_error", "message": f"Internal error: {exc}"}
            )

    async def _end(self, status: str, **fields: Any) -> None:
        fields.setdefault("usage", self.usage if self.usage["total_tokens"] else None)
        step_status = {"cancelled": "cancelled", "failed": "failed", "incomplete": "completed"}
        message_reason = {
            "cancelled": "run_cancelled",
            "failed": "run_failed",
            "incomplete": "max_tokens",
        }
        await self.session.rollback()  # drop anything half-done by the failed step
        await self.session.refresh(self.run)
        if status == "cancelled" and self.run.status == "cancelling":
            self.writer.emit("thread.run.cancelling", render_run(self.run))
        done = await finish_run(
            self.session,
            self.run,
            self.writer,
            status,
            step_status=step_status[status],
            message_reason=message_reason[status],
            **fields,
        )
        if not done and status != "cancelled" and self.run.status == "cancelling":
            await self._end("cancelled")

    async def _load_tool_context(self) -> None:
        """file_search settings (the run's stores) and the searches earlier turns made."""
        run = self.run
        tool = next((t for t in run.tools or [] if t.get("type") == "file_search"), None)
        if tool is None or self.executor.index is None:
            return
        store_ids: list[str] = []
        thread = await self.session.get(Thread, run.thread_id)
        assistant = await self.session.get(Assistant, run.assistant_id)
        for owner in (assistant, thread):
            resources = (owner.tool_resources or {}) if owner is not None else {}
            for store_id in (resources.get("file_search") or {}).get("vector_store_ids", []):
                if store_id not in store_ids:
                    store_ids.append(store_id)
        self.file_search = FileSearchSettings.from_tool(tool, store_ids)
        # Files attached moments ago may still be in ingestion; a search should see them.
        await wait_for_ingestion(self.session, store_ids, patience=INGESTION_PATIENCE_SECONDS)
        steps = (
            await self.session.scalars(
                select(RunStep)
                .where(RunStep.run_id == run.id, RunStep.type == "tool_calls")
                .order_by(RunStep.seq)
            )
        ).all()
        for step in steps:
            for call in step.step_details.get("tool_calls", []):
                if call.get("type") == "file_search":
                    self.searches.append(call["file_search"].get("results", []))

    def _is_builtin(self, name: str) -> bool:
        return self.file_search is not None and name == FILE_SEARCH

    async def _loop(self) -> None:
        run = self.run
        for _ in range(self.settings.max_run_steps):
            prompt = await build_prompt(self.session, run)
            request = self._request(prompt)
            turn = Turn()
            await self._stream_turn(request, turn)
            outcome = await self._close_turn(turn, request)
            if outcome == "continue":
                continue
            return
        raise RunIncomplete("max_completion_tokens")

    def _request(self, prompt: list[dict[str, Any]]) -> ChatRequest:
        run = self.run
        route = self.executor.router.route(run.model)
        max_tokens = None
        if run.max_prompt_tokens is not None:
            prompt = _fit_prompt(route.litellm_model, prompt, run.max_prompt_tokens)
        if run.max_completion_tokens is not None:
            used = self.usage["completion_tokens"]
            max_tokens = run.max_completion_tokens - used
            if max_tokens <= 0:
                raise RunIncomplete("max_completion_tokens")
        tools = llm_tools(run.tools)
        if self.file_search is not None:
            tools.append(FILE_SEARCH_DEFINITION)
        return ChatRequest(
            route=route,
            messages=prompt,
            tools=tools,
            tool_choice=llm_tool_choice(run.tool_choice) if tools else None,
            parallel_tool_calls=run.parallel_tool_calls if tools else None,
            response_format=llm_response_format(run.response_format),
            temperature=run.temperature,
            top_p=run.top_p,
            max_tokens=max_tokens,
        )

    async def _stream_turn(self, request: ChatRequest, turn: Turn) -> None:
        stream = stream_chat(request, self.executor.policy).__aiter__()
        cancelled = asyncio.ensure_future(self.cancel.wait())
        try:
            while True:
                chunk = asyncio.ensure_future(anext(stream))
                done, _ = await asyncio.wait(
                    {chunk, cancelled}, return_when=asyncio.FIRST_COMPLETED
                )
                if chunk not in done:
                    chunk.cancel()
                    # Let the generator unwind before it is closed below.
                    await asyncio.wait({chunk})
                    raise RunCancelled()
                try:
                    item = chunk.result()
                except StopAsyncIteration:
                    return
                if isinstance(item, TextDelta):
                    await self._on_text(turn, item.text)
                elif isinstance(item, ToolCallDelta):
                    await self._on_tool_delta(turn, item)
                else:
                    turn.finish = item
                if (
                    self.writer.has_unpersisted
                    and time.monotonic() - self._last_flush > DELTA_FLUSH_SECONDS
                ):
                    self._last_flush = time.monotonic()
                    await self.writer.commit(self.session)
        finally:
            cancelled.cancel()
            await stream.aclose()

    def _new_step(self, step_type: str, details: dict[str, Any]) -> RunStep:
        run = self.run
        step = RunStep(
            id=new_id("step_"),
            run_id=run.id,
            thread_id=run.thread_id,
            assistant_id=run.assistant_id,
            type=step_type,
            status="in_progress",
            step_details=details,
            metadata_={},
        )
        self.session.add(step)
        self.writer.emit("thread.run.step.created", render_step(step))
        self.writer.emit("thread.run.step.in_progress", render_step(step))
        return step

    async def _on_text(self, turn: Turn, text: str) -> None:
        if turn.message is None:
            run = self.run
            message = Message(
                id=new_id("msg_"),
                thread_id=run.thread_id,
                role="assistant",
                content=[],
                status="in_progress",
                assistant_id=run.assistant_id,
                run_id=run.id,
                attachments=[],
                metadata_={},
            )
            turn.message_step = self._new_step(
                "message_creation",
                {"type": "message_creation", "message_creation": {"message_id": message.id}},
            )
            self.session.add(message)
            turn.message = message
            rendered = MessageObject.from_row(message).model_dump()
            self.writer.emit("thread.message.created", rendered)
            self.writer.emit("thread.message.in_progress", rendered)
            await self.writer.commit(self.session)
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

    async def _on_tool_delta(self, turn: Turn, delta: ToolCallDelta) -> None:
        if turn.message is not None and turn.message.status == "in_progress":
            self._complete_message(turn, "completed")
        if turn.tool_step is None:
            turn.tool_step = self._new_step("tool_calls", {"type": "tool_calls", "tool_calls": []})
            await self.writer.commit(self.session)
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
        if self._is_builtin(call.name):
            if not fresh:
                return  # the client sees a file_search call, not the model's query text
            entry.update(id=call.id, type="file_search", file_search={})
        else:
            function: dict[str, Any] = {"arguments": delta.arguments}
            entry["type"] = "function"
            if fresh:
                entry["id"] = call.id
                function.update(name=call.name, output=None)
            entry["function"] = function
        self.writer.emit_delta(
            "thread.run.step.delta",
            {
                "id": turn.tool_step.id,
                "object": "thread.run.step.delta",
                "delta": {"step_details": {"type": "tool_calls", "tool_calls": [entry]}},
            },
        )

    def _complete_message(self, turn: Turn, status: str) -> None:
        message = turn.message
        assert message is not None and turn.message_step is not None
        text = "".join(turn.text)
        annotations = citations(text, self.searches) if self.searches else []
        message.content = [{"type": "text", "text": {"value": text, "annotations": annotations}}]
        message.status = status
        if status == "completed":
            message.completed_at = now()
        else:
            message.incomplete_at = now()
            message.incomplete_details = {"reason": "max_tokens"}
        self.writer.emit(f"thread.message.{status}", MessageObject.from_row(message).model_dump())
        turn.message_step.status = "completed"
        turn.message_step.completed_at = now()
        self.writer.emit("thread.run.step.completed", render_step(turn.message_step))

    async def _close_turn(self, turn: Turn, request: ChatRequest) -> str:
        """Persist what the model produced and decide: continue, or the run's next state."""
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
        # Kept here and written with the next state change, not as an UPDATE of its own.
        total = self.usage = {key: self.usage[key] + step_usage[key] for key in step_usage}
        truncated = finish.finish_reason == "length"
        if turn.message is not None and turn.message.status == "in_progress":
            assert turn.message_step is not None
            turn.message_step.usage = step_usage
            self._complete_message(
                turn, "incomplete" if truncated and not turn.calls else "completed"
            )

        if turn.calls and not truncated:
            return await self._close_tool_turn(turn, step_usage, total)

        if truncated:
            raise RunIncomplete("max_completion_tokens")
        if not await transition(self.session, run, "completed", usage=total):
            raise RunCancelled()
        self.writer.emit("thread.run.completed", render_run(run))
        await self.writer.commit(self.session)
        return "completed"

    async def _close_tool_turn(
        self, turn: Turn, step_usage: dict[str, int], total: dict[str, int]
    ) -> str:
        """Run built-in tools now; stop at requires_action if the model called functions."""
        run = self.run
        step = turn.tool_step
        assert step is not None
        step_calls: list[dict[str, Any]] = []
        llm_calls: list[dict[str, Any]] = []
        required: list[dict[str, Any]] = []
        for call in turn.calls.values():
            llm_call: dict[str, Any] = {
                "id": call.id,
                "name": call.name,
                "arguments": call.arguments,
            }
            if self._is_builtin(call.name):
                assert self.file_search is not None and self.executor.index is not None
                outcome = await run_file_search(
                    self.session,
                    self.executor.index,
                    self.executor.embedder,
                    self.file_search,
                    call.id,
                    call.arguments,
                    search_number=len(self.searches),
                )
                self.searches.append(outcome.step_call["file_search"]["results"])
                step_calls.append(outcome.step_call)
                llm_call["output"] = outcome.output
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
        step.usage = step_usage
        step.step_details = {"type": "tool_calls", "tool_calls": step_calls}
        step.internal = {"llm_calls": llm_calls}
        if not required:
            step.status = "completed"
            step.completed_at = now()
            self.writer.emit("thread.run.step.completed", render_step(step, run.include))
            run.usage = total
            await self.writer.commit(self.session)
            return "continue"
        action = {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": required}}
        if not await transition(
            self.session,
            run,
            "requires_action",
            required_action=action,
            usage=total,
            expires_at=now() + self.settings.run_expiry_seconds,
        ):
            raise RunCancelled()
        self.writer.emit("thread.run.requires_action", render_run(run))
        await self.writer.commit(self.session)
        return "requires_action"


def _fit_prompt(model: str, prompt: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
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
