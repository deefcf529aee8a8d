"""Jupyter messaging shared by the backends: iopub messages of one execute request → Execution.

Both backends speak the same protocol (ZMQ sockets locally, the gateway's websocket remotely);
only how messages arrive differs.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from app.sandbox.base import ANSI, Execution, clean_traceback

MAX_LOG_CHARS = 100_000  # per call, kept for the step and the model
MAX_IMAGES = 10  # per call


class OutputCollector:
    """Feed it the iopub messages whose parent is the request; `done` once the kernel idles."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.images: list[bytes] = []
        self.error: str | None = None
        self.done = False

    def _text(self, text: str) -> None:
        if self.size >= MAX_LOG_CHARS:
            return
        text = ANSI.sub("", text)[: MAX_LOG_CHARS - self.size]
        self.parts.append(text)
        self.size += len(text)
        if self.size >= MAX_LOG_CHARS:
            self.parts.append("\n[output truncated]\n")

    def feed(self, msg: dict[str, Any]) -> None:
        kind = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
        content = msg.get("content") or {}
        if kind == "stream":
            self._text(content.get("text", ""))
        elif kind in ("display_data", "execute_result"):
            data = content.get("data") or {}
            png = data.get("image/png")
            if png and len(self.images) < MAX_IMAGES:
                try:
                    self.images.append(base64.b64decode(png))
                    return
                except (binascii.Error, ValueError):
                    pass
            text = data.get("text/plain")
            if text and kind == "execute_result":
                self._text(text if text.endswith("\n") else text + "\n")
        elif kind == "error":
            self.error = f"{content.get('ename', 'Error')}: {content.get('evalue', '')}"
            self._text(clean_traceback(content.get("traceback") or [self.error]) + "\n")
        elif kind == "status" and content.get("execution_state") == "idle":
            self.done = True

    def result(self) -> Execution:
        return Execution(logs="".join(self.parts), images=self.images, error=self.error)
