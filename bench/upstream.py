"""The fake OpenAI upstream as a separate process (its standalone CLI), for benchmarks: in its
own process it does not share the client's GIL, so it — not the client — paces the figures."""

from __future__ import annotations

import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


class Upstream:
    def __init__(
        self, log_path: Path, *, token_delay_ms: float = 0.0, embedding_dim: int = 64
    ) -> None:
        self.log_path = log_path
        self.args = ["--token-delay-ms", str(token_delay_ms), "--embedding-dim", str(embedding_dim)]
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def start(self, timeout: float = 30.0) -> Upstream:
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.fake_upstream",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    *self.args,
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake upstream exited early: {self.log_path.read_text()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                match = re.search(r"listening on (\S+)", self.proc.stdout.readline())
                if match:
                    self.base_url = match.group(1)  # …/v1
                    # Keep draining its stdout so it can never block on a full pipe.
                    threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                    return self
        self.stop()
        raise RuntimeError("fake upstream did not start")

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def set_delay(self, seconds: float) -> None:
        r = httpx.post(f"{self.root}/__fake__/config", json={"token_delay": seconds}, timeout=10)
        r.raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.root}/__fake__/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
