"""Run the real server (`opengrove serve`) as a subprocess for tests and benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(
        self, data_dir: Path, env: dict[str, str] | None = None, command: str = "serve"
    ) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.env = {**os.environ, **(env or {})}
        self.command = command
        self.log_path = data_dir / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        args = [sys.executable, "-m", "app.cli", self.command, "--data-dir", str(self.data_dir)]
        if self.command == "serve":
            args += ["--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            args,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            if self.command != "serve":
                if "opengrove ready" in self.log():
                    return self
            else:
                try:
                    # 200 with "starting" already serves; tests want every part loaded.
                    health = httpx.get(f"{self.base_url}/health", timeout=1)
                    if health.status_code == 200 and health.json().get("status") == "ok":
                        return self
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """Die without any clean-up, as a crashed process would."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
