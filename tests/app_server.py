"""The real app on a real port, in this process, with settings a test chooses.

The session server (tests/server_process.py) is configured by environment variables; this
one takes a Settings object, so tests can set values that have no variable yet, and can
reach into the running app (`runtime`, `call(coro)` on the server's event loop).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import uvicorn

from app.config import Settings
from app.main import create_app
from app.runtime import Runtime
from tests.server_process import free_port

T = TypeVar("T")


def make_settings(data_dir: Path, database_url: str, **overrides: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        models=["gpt-4o", "fake-model"],
        **overrides,
    )


class AppServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.app = create_app(settings)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None

    @property
    def runtime(self) -> Runtime:
        """The running app's runtime (database, index, ingestion, ...)."""
        return self.app.state.runtime

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Self:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            # Streams still open when a test ends (one that failed midway) must not keep the
            # server up: uvicorn would otherwise wait for them forever.
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="app-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"app server failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("app server did not start in time")
            time.sleep(0.02)
        return self

    def _run(self) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            assert self._server is not None
            await self._server.serve()

        try:
            asyncio.run(serve())
        except BaseException as exc:
            self._error = exc

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the server's event loop (where the runtime lives)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
            if self._thread.is_alive():
                raise RuntimeError("app server did not stop")
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
