"""The `remote` backend: kernels on a Jupyter Kernel Gateway (`jupyter-kernel-gateway`), over
its REST API (POST/DELETE /api/kernels, /interrupt, /restart) and each kernel's websocket
(`/api/kernels/{id}/channels`, Jupyter messages as JSON with a `channel` field).

The gateway runs elsewhere (compose: the `sandbox` service, on a network with no route out and
nothing of the server's), so files cross through the kernel itself: base64 in code in, and
printed base64 out. Each kernel works in its thread's directory `<root>/<thread id>` (root
/mnt/data in the image): kernels on one gateway share that container, so isolation between
threads is by directory, not by namespace as in the local backend.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx

from app.sandbox.base import Execution, SandboxFile, SandboxUnavailable
from app.sandbox.messages import OutputCollector

logger = logging.getLogger("opengrove.sandbox")

CHUNK = 3 * 256 * 1024  # bytes per upload message (1 MB of base64)
INTERRUPT_GRACE = 5.0
BEGIN, END = "<<<opengrove:", ">>>"

LIST_CODE = """(lambda os, json, root: print({begin!r} + json.dumps([
    [os.path.join(d, f), s.st_size, s.st_mtime]
    for d, _, fs in os.walk(root) for f in sorted(fs)
    for s in [os.lstat(os.path.join(d, f))] if __import__('stat').S_ISREG(s.st_mode)
][:500]) + {end!r}))(__import__('os'), __import__('json'), {root!r})"""

READ_CODE = """(lambda os, p, limit: print({begin!r} + (
    __import__('base64').b64encode(open(p, 'rb').read()).decode()
    if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) <= limit else '-'
) + {end!r}))(__import__('os'), {path!r}, {limit!r})"""

WRITE_CODE = """(lambda p, mode, data: open(p, mode).write(data))({path!r}, {mode!r},
    __import__('base64').b64decode({data!r}))"""

SETUP_CODE = (
    """(lambda os, d: (os.makedirs(d, exist_ok=True), os.chdir(d)))(__import__('os'), {d!r})"""
)


class RemoteBackend:
    name = "remote"

    def __init__(self, url: str, token: str | None, root: str, kernel_name: str = "python3"):
        self.url = url.rstrip("/")
        self.root = root.rstrip("/") or "/"
        self.kernel_name = kernel_name
        headers = {"Authorization": f"token {token}"} if token else {}
        self.headers = headers
        self.http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30)

    async def probe(self) -> None:
        try:
            response = await self.http.get("/api/kernelspecs")
        except httpx.HTTPError as exc:
            raise SandboxUnavailable(
                f"the kernel gateway at {self.url} is unreachable ({exc.__class__.__name__})"
            ) from None
        if response.status_code != 200:
            raise SandboxUnavailable(
                f"the kernel gateway at {self.url} answered {response.status_code} "
                "(check OPENGROVE_SANDBOX_TOKEN)"
            )
        specs = response.json().get("kernelspecs") or {}
        if self.kernel_name not in specs:
            raise SandboxUnavailable(
                f"the kernel gateway has no {self.kernel_name!r} kernel (has {sorted(specs)})"
            )

    def data_dir(self, thread_id: str) -> str:
        return f"{self.root}/{thread_id}"

    async def launch(self, thread_id: str) -> RemoteKernel:
        kernel = RemoteKernel(self, self.data_dir(thread_id))
        await kernel.start()
        return kernel

    async def close(self) -> None:
        await self.http.aclose()


class RemoteKernel:
    def __init__(self, backend: RemoteBackend, data_dir: str) -> None:
        self.backend = backend
        self.id: str | None = None
        self.data_dir = data_dir
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.session = uuid.uuid4().hex
        self.waiting: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.dead = True

    async def start(self) -> None:
        http = self.backend.http
        if self.id is None:
            response = await http.post("/api/kernels", json={"name": self.backend.kernel_name})
            response.raise_for_status()
            self.id = response.json()["id"]
        else:
            await self._close_ws()
            response = await http.post(f"/api/kernels/{self.id}/restart")
            if response.status_code == 404:  # the gateway culled it: a new one
                self.id = None
                return await self.start()
            response.raise_for_status()
        await self._connect()
        await self._run(SETUP_CODE.format(d=self.data_dir), 60)

    async def _connect(self) -> None:
        from websockets.asyncio.client import connect

        ws_url = self.backend.url.replace("http", "ws", 1)
        self.ws = await connect(
            f"{ws_url}/api/kernels/{self.id}/channels?session_id={self.session}",
            additional_headers=self.backend.headers,
            max_size=None,
        )
        self.dead = False
        self.reader = asyncio.create_task(self._read(), name=f"kernel-ws-{self.id}")

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg.get("channel") != "iopub":
                    continue
                content = msg.get("content") or {}
                state = content.get("execution_state")
                if msg.get("msg_type") == "status" and state in ("restarting", "dead"):
                    self.dead = True  # the gateway restarted it: its state is gone
                parent = (msg.get("parent_header") or {}).get("msg_id")
                queue = self.waiting.get(parent or "")
                if queue is not None:
                    queue.put_nowait(msg)
        except Exception:
            pass
        finally:
            self.dead = True

    def alive(self) -> bool:
        return not self.dead

    def _message(self, msg_type: str, content: dict[str, Any], channel: str) -> dict[str, Any]:
        return {
            "header": {
                "msg_id": uuid.uuid4().hex,
                "username": "opengrove",
                "session": self.session,
                "msg_type": msg_type,
                "version": "5.3",
                "date": datetime.now(UTC).isoformat(),
            },
            "parent_header": {},
            "metadata": {},
            "content": content,
            "channel": channel,
            "buffers": [],
        }

    async def _run(self, code: str, time_limit: float, silent: bool = True) -> Execution:
        message = self._message(
            "execute_request",
            {
                "code": code,
                "silent": silent,
                "store_history": not silent,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
            "shell",
        )
        msg_id = message["header"]["msg_id"]
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.waiting[msg_id] = queue
        collector = OutputCollector()
        try:
            await self.ws.send(json.dumps(message))
            deadline = time.monotonic() + time_limit
            while not collector.done:
                if self.dead:
                    result = collector.result()
                    result.kernel_lost = True
                    result.error = (
                        "The kernel died (it may have hit a resource limit); its variables "
                        "are lost. The next call starts it again."
                    )
                    result.logs += f"\n{result.error}\n"
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    return await self._timed_out(collector, queue, time_limit)
                with contextlib.suppress(TimeoutError):
                    collector.feed(await asyncio.wait_for(queue.get(), min(left, 0.5)))
            return collector.result()
        finally:
            self.waiting.pop(msg_id, None)

    async def _timed_out(
        self, collector: OutputCollector, queue: asyncio.Queue[dict[str, Any]], time_limit: float
    ) -> Execution:
        with contextlib.suppress(httpx.HTTPError):
            await self.backend.http.post(f"/api/kernels/{self.id}/interrupt")
        deadline = time.monotonic() + INTERRUPT_GRACE
        while not collector.done and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                collector.feed(await asyncio.wait_for(queue.get(), 0.25))
        result = collector.result()
        result.timed_out = True
        if collector.done:
            result.error = f"Execution timed out after {time_limit:g} seconds and was interrupted."
        else:
            self.dead = True  # the pool starts it again (a restart) before the next call
            result.kernel_lost = True
            result.error = (
                f"Execution timed out after {time_limit:g} seconds and did not stop when "
                "interrupted, so the kernel was restarted; its variables are lost."
            )
        result.logs += f"\n{result.error}\n"
        return result

    async def execute(self, code: str, time_limit: float) -> Execution:
        return await self._run(code, time_limit, silent=False)

    async def _output(self, code: str) -> str | None:
        result = await self._run(code, 120)
        start = result.logs.find(BEGIN)
        end = result.logs.rfind(END)
        if start < 0 or end < start:
            return None
        return result.logs[start + len(BEGIN) : end]

    async def write_file(self, name: str, data: bytes) -> str:
        path = f"{self.data_dir}/{name}"
        for offset in range(0, max(len(data), 1), CHUNK):
            chunk = base64.b64encode(data[offset : offset + CHUNK]).decode()
            mode = "wb" if offset == 0 else "ab"
            result = await self._run(WRITE_CODE.format(path=path, mode=mode, data=chunk), 120)
            if result.error:
                raise RuntimeError(f"writing {path} failed: {result.error}")
        return path

    async def list_files(self) -> list[SandboxFile]:
        text = await self._output(LIST_CODE.format(begin=BEGIN, end=END, root=self.data_dir))
        if text is None:
            return []
        return [SandboxFile(p, int(size), float(mtime)) for p, size, mtime in json.loads(text)]

    async def read_file(self, path: str, limit: int) -> bytes | None:
        if not path.startswith(self.data_dir + "/") or "/../" in path:
            return None
        text = await self._output(
            READ_CODE.format(begin=BEGIN, end=END, path=path, limit=min(limit, 64 << 20))
        )
        if text is None or text == "-":
            return None
        return base64.b64decode(text)

    async def _close_ws(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        self.ws = None

    async def shutdown(self) -> None:
        if self.ws is not None and not self.dead:
            with contextlib.suppress(Exception):  # the kernel's directory goes with it
                await self._run(
                    f"__import__('shutil').rmtree({self.data_dir!r}, ignore_errors=True)", 30
                )
        await self._close_ws()
        if self.id is not None:
            with contextlib.suppress(httpx.HTTPError):
                await self.backend.http.delete(f"/api/kernels/{self.id}")
