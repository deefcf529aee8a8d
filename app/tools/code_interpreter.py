"""The `code_interpreter` tool: the model runs Python in its thread's kernel (`app.sandbox`).

The model sees a function `python(code)`: a stateful Jupyter kernel whose files are under
/mnt/data (the assistant's and thread's `tool_resources.code_interpreter.file_ids` and the
thread's message attachments for code_interpreter, by their filenames). Clients see OpenAI's
`code_interpreter` tool calls: the input streams as step deltas, the outputs (`logs`, `image`)
arrive in a final delta. Displayed images become PNG files (purpose `assistants_output`),
shown as `image` outputs and as `image_file` parts of the next assistant message;
`sandbox:/mnt/data/…` links in the answer become `file_path` annotations to files made from
what the code wrote.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import mimetypes
import re
import time
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import String, cast, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import Database
from app.files.models import StoredFile
from app.files.service import file_path
from app.ids import new_id, now
from app.runs.models import Run, RunStep
from app.sandbox import Execution, KernelPool
from app.threads.models import Message
from app.tools.base import RunContext, ToolResult

logger = logging.getLogger("opengrove.tools")

TOOL_TYPE = "code_interpreter"
TOOL_NAME = "python"
MODEL_OUTPUT_CHARS = 20_000  # of the logs, what the model reads back
LINK = re.compile(r"sandbox:(/[^\s()\[\]<>\"'`]+)")
EXPIRED = (
    "Note: this thread's earlier Python session has expired (idle too long, or the server "
    "restarted): its variables and the files it wrote are gone. This code ran in a new "
    "session; the files provided by the user are in place again.\n"
)


def definition(data_dir: str, files: list[str]) -> dict[str, Any]:
    listing = (
        "Files provided by the user: " + ", ".join(f"{data_dir}/{name}" for name in files) + "."
        if files
        else "No files were provided."
    )
    return {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": (
                "Run Python code in a stateful Jupyter kernel (variables persist between calls "
                "of this conversation; it times out on long work). numpy, pandas and matplotlib "
                f"are installed; there is no internet access. The working directory is "
                f"{data_dir}. {listing} Print what you need to see. Charts shown with "
                "plt.show() are displayed to the user. To give the user a file, save it under "
                f"{data_dir} and link it in your answer as sandbox:{data_dir}/<name>."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "code": {"type": "string", "description": "The Python code to run."}
                },
                "required": ["code"],
            },
        },
    }


def code_of(arguments: str) -> str:
    """The code in a finished call's arguments: {"code": …} as asked, or raw code (some
    models send the program itself)."""
    text = arguments or ""
    if text.lstrip().startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            return partial_code(text)
        if isinstance(parsed, dict):
            for key in ("code", "input", "source"):
                if isinstance(parsed.get(key), str):
                    return parsed[key]
        return text
    return text


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_START = re.compile(r'^\s*\{\s*"(?:code|input|source)"\s*:\s*"')


def partial_code(arguments: str) -> str:
    """The code decoded so far from streaming arguments: `{"code": "…` cut anywhere (an
    escape cut in half waits for its end); anything not starting so is raw code."""
    if not arguments.lstrip().startswith("{"):
        return arguments
    match = _START.match(arguments)
    if match is None:
        return ""
    out: list[str] = []
    i, text = match.end(), arguments
    while i < len(text):
        ch = text[i]
        if ch == '"':
            break
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= len(text):
            break
        esc = text[i + 1]
        if esc == "u":
            digits = text[i + 2 : i + 6]
            if len(digits) < 4:
                break
            code = int(digits, 16)
            if 0xD800 <= code < 0xDC00:  # a surrogate pair: wait for both halves
                low = text[i + 8 : i + 12] if text[i + 6 : i + 8] == "\\u" else ""
                if len(low) < 4:
                    break
                out.append(chr(0x10000 + ((code - 0xD800) << 10) + (int(low, 16) - 0xDC00)))
                i += 12
                continue
            out.append(chr(code))
            i += 6
            continue
        out.append(_ESCAPES.get(esc, esc))
        i += 2
    return "".join(out)


def _safe_name(name: str, file_id: str, taken: set[str]) -> str:
    base = PurePosixPath(name.replace("\\", "/")).name.strip() or file_id
    base = "".join(c if c.isprintable() else "_" for c in base)[:200]
    if base in (".", "..") or base.startswith("."):
        base = f"{file_id}{base}" if base not in (".", "..") else file_id
    if base in taken:
        base = f"{file_id}-{base}"
    taken.add(base)
    return base


class CodeInterpreterTool:
    """The `code_interpreter` strategy: offered only when the sandbox works."""

    type = TOOL_TYPE

    def __init__(self, sandbox: KernelPool, db: Database, files_dir: Path) -> None:
        self.sandbox = sandbox
        self.db = db
        self.files_dir = files_dir

    async def prepare(self, session: AsyncSession, run: RunContext) -> ActiveCodeInterpreter | None:
        if await self.sandbox.ready() is not None:
            return None  # logged at start: the model is not offered the tool
        files = await _run_files(session, run)
        shown = await _images_shown(session, run.run_id)
        return ActiveCodeInterpreter(self, run, files, shown)


async def _run_files(session: AsyncSession, run: RunContext) -> list[tuple[str, str]]:
    """(file id, name in the sandbox) of every file the run's kernel should hold."""
    ids: list[str] = []
    for resources in run.resources:
        for file_id in (resources.get("code_interpreter") or {}).get("file_ids", []):
            ids.append(file_id)
    attachments = await session.scalars(
        select(Message.attachments).where(Message.thread_id == run.thread_id)
    )
    for entries in attachments:
        for attachment in entries or []:
            tools = {t.get("type") for t in attachment.get("tools") or []}
            if TOOL_TYPE in tools:
                ids.append(attachment["file_id"])
    ids = list(dict.fromkeys(ids))
    if not ids:
        return []
    rows = {
        row.id: row
        for row in await session.scalars(
            select(StoredFile).where(
                StoredFile.id.in_(ids), StoredFile.project_id == run.project_id
            )
        )
    }
    taken: set[str] = set()
    return [(i, _safe_name(rows[i].filename, i, taken)) for i in ids if i in rows]


async def _images_shown(session: AsyncSession, run_id: str) -> set[str]:
    shown: set[str] = set()
    for content in await session.scalars(select(Message.content).where(Message.run_id == run_id)):
        for part in content or []:
            if part.get("type") == "image_file":
                shown.add(part["image_file"]["file_id"])
    return shown


async def _used_before(session: AsyncSession, thread_id: str) -> bool:
    """Whether code ran on this thread before (so a missing kernel means an expired one)."""
    found = await session.scalar(
        select(RunStep.id)
        .join(Run, Run.id == RunStep.run_id)
        .where(
            Run.thread_id == thread_id,
            RunStep.type == "tool_calls",
            cast(RunStep.step_details, String).like('%"code_interpreter"%'),
        )
        .limit(1)
    )
    return found is not None


class ActiveCodeInterpreter:
    name = TOOL_NAME
    type = TOOL_TYPE

    def __init__(
        self,
        tool: CodeInterpreterTool,
        run: RunContext,
        files: list[tuple[str, str]],
        shown: set[str],
    ) -> None:
        self.tool = tool
        self.sandbox = tool.sandbox
        self.run = run
        self.files = files
        self.data_dir = self.sandbox.data_dir(run.thread_id)
        self.definition = definition(self.data_dir, [name for _, name in files])
        self.calls = 0  # this run's code calls so far (replayed and new)
        self.streamed: dict[str, int] = {}  # call id → characters of input sent as deltas
        self.pending_images: list[str] = []  # image files not yet in a message
        self.shown = shown
        self.linked: dict[str, str] = {}  # sandbox path → file id (this message's links)

    def started(self, call_id: str) -> dict[str, Any]:
        self.streamed[call_id] = 0
        return {
            "id": call_id,
            "type": TOOL_TYPE,
            "code_interpreter": {"input": "", "outputs": []},
        }

    def arguments_delta(self, call_id: str, arguments: str) -> dict[str, Any] | None:
        code = partial_code(arguments)
        sent = self.streamed.get(call_id, 0)
        if len(code) <= sent:
            return None
        self.streamed[call_id] = len(code)
        return {"type": TOOL_TYPE, "code_interpreter": {"input": code[sent:]}}

    def replay(self, step_call: dict[str, Any]) -> None:
        self.calls += 1
        for output in step_call.get(TOOL_TYPE, {}).get("outputs", []):
            if output.get("type") == "image":
                self.pending_images.append(output["image"]["file_id"])

    async def call(self, session: AsyncSession, call_id: str, arguments: str) -> ToolResult:
        code = code_of(arguments)
        thread_id = self.run.thread_id
        notes: list[str] = []
        if not self.sandbox.has_session(thread_id) and (
            self.calls or await _used_before(session, thread_id)
        ):
            notes.append(EXPIRED)
        self.calls += 1
        started = time.time()
        try:
            await self._upload_files(thread_id)
            result = await self.sandbox.execute(thread_id, code)
        except Exception as exc:
            logger.exception("code_interpreter: the sandbox failed (thread %s)", thread_id)
            result = Execution(error=f"The Python sandbox failed: {exc}")
            result.logs = result.error + "\n"
        images = [
            await self._save(image, f"{call_id}-{n}.png") for n, image in enumerate(result.images)
        ]
        self.pending_images.extend(images)
        written = await self._written_since(thread_id, started)
        logs = "".join(notes) + result.logs
        outputs: list[dict[str, Any]] = []
        if logs:
            outputs.append({"type": "logs", "logs": logs})
        outputs += [{"type": "image", "image": {"file_id": file_id}} for file_id in images]
        step_call = {
            "id": call_id,
            "type": TOOL_TYPE,
            "code_interpreter": {"input": code, "outputs": outputs},
        }
        delta = {
            "type": TOOL_TYPE,
            "code_interpreter": {"outputs": [{"index": i, **o} for i, o in enumerate(outputs)]},
        }
        return ToolResult(step_call, self._for_model(logs, result, images, written), delta)

    def _for_model(
        self, logs: str, result: Execution, images: list[str], written: list[str]
    ) -> str:
        text = logs
        if len(text) > MODEL_OUTPUT_CHARS:
            half = MODEL_OUTPUT_CHARS // 2
            text = (
                f"{text[:half]}\n[… {len(text) - MODEL_OUTPUT_CHARS} characters cut …]\n"
                f"{text[-half:]}"
            )
        lines = [text.rstrip("\n")] if text.strip() else []
        if images:
            lines.append(f"[{len(images)} image(s) displayed to the user]")
        if written:
            lines.append(
                "Files written: " + ", ".join(written) + f". Link one for the user as "
                f"sandbox:{written[0]}."
            )
        if not lines:
            lines.append("(no output)" if result.error is None else result.error)
        return "\n".join(lines)

    async def _upload_files(self, thread_id: str) -> None:
        present = self.sandbox.uploaded(thread_id)
        for file_id, name in self.files:
            if file_id in present:
                continue
            path = file_path(self.tool.files_dir, file_id)
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except OSError:
                logger.warning("code_interpreter: file %s has no bytes on disk", file_id)
                continue
            await self.sandbox.upload(thread_id, file_id, name, data)

    async def _written_since(self, thread_id: str, started: float) -> list[str]:
        try:
            files = await self.sandbox.list_files(thread_id)
        except Exception:
            return []
        return [f.path for f in files if f.mtime >= started - 1][:20]

    async def _save(self, data: bytes, filename: str) -> str:
        """A file of the run's project, purpose assistants_output; returns its id."""
        row = StoredFile(
            id=new_id("file-"),
            project_id=self.run.project_id,
            created_at=now(),
            filename=filename,
            purpose="assistants_output",
            bytes=len(data),
            mime_type=mimetypes.guess_type(filename)[0],
            sha256=hashlib.sha256(data).hexdigest(),
            status="processed",
        )
        target = file_path(self.tool.files_dir, row.id)
        await asyncio.to_thread(target.write_bytes, data)
        try:
            async with self.tool.db.sessionmaker() as session:
                session.add(row)
                await session.commit()
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return row.id

    async def finish_message(self, text: str) -> list[dict[str, Any]]:
        self.linked = {}
        for match in LINK.finditer(text):
            path = match.group(1).rstrip(".,;:!?")
            if path in self.linked or not path.startswith(self.data_dir.rstrip("/") + "/"):
                continue
            try:
                data = await self.sandbox.read_file(self.run.thread_id, path)
            except Exception:
                logger.exception("code_interpreter: reading %s failed", path)
                data = None
            if data is not None:
                self.linked[path] = await self._save(data, PurePosixPath(path).name)
        parts = [
            {"type": "image_file", "image_file": {"file_id": file_id}}
            for file_id in self.pending_images
            if file_id not in self.shown
        ]
        self.shown.update(self.pending_images)
        self.pending_images = []
        return parts

    def annotate(self, text: str) -> list[dict[str, Any]]:
        annotations = []
        for match in LINK.finditer(text):
            path = match.group(1).rstrip(".,;:!?")
            file_id = self.linked.get(path)
            if file_id is None:
                continue
            end = match.start(1) + len(path)
            annotations.append(
                {
                    "type": "file_path",
                    "text": text[match.start() : end],
                    "start_index": match.start(),
                    "end_index": end,
                    "file_path": {"file_id": file_id},
                }
            )
        return annotations
