"""What every request must pass before a route sees it: a Host this server answers to, a body
within the size cap, JSON bodies sent as JSON, and no NUL characters in them.

A plain ASGI middleware: an oversized body is refused from its Content-Length before a byte
is read, or as soon as a streamed body passes the cap; a browser page (or a DNS-rebinding
attack on a loopback server) cannot post simple-request bodies without a JSON content type.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import APIError, BodyRefused, InvalidRequest, error_response, not_json_error

# A JSON escape for NUL that is not itself an escaped backslash followed by "u0000".
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# Multipart uploads: the file itself is capped by OPENGROVE_MAX_FILE_BYTES; the rest of the
# form (boundaries, part headers, purpose, expires_after) gets this much on top.
FORM_OVERHEAD_BYTES = 1024 * 1024


class RequestTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"Request body too large: the maximum is {limit} bytes "
            "(OPENGROVE_MAX_REQUEST_BYTES; file uploads: OPENGROVE_MAX_FILE_BYTES).",
            code="request_too_large",
        )


def header_values(scope: Scope, *names: bytes) -> list[str | None]:
    """The request's values of these (lower-case) headers, None where absent; one pass."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in names:
            found[name] = value.decode("latin-1")
    return [found.get(name) for name in names]


def _host_of(value: str) -> str:
    if value.startswith("["):  # [::1]:8000
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_upload(path: str) -> bool:
    return path in ("/v1/files", "/files")


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_upload_bytes: int,
        allowed_hosts: Collection[str] | None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes + FORM_OVERHEAD_BYTES
        self.allowed_hosts = (
            None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host, content_type, declared = header_values(
            scope, b"host", b"content-type", b"content-length"
        )
        length = int(declared) if declared and declared.isdigit() else -1
        upload = _is_upload(scope["path"])
        limit = self.max_upload_bytes if upload else self.max_body_bytes
        is_json = _is_json(content_type)
        try:
            self._check_host(host)
            if length > limit:
                raise RequestTooLarge(limit)
            if length > 0 and not upload and not is_json:
                raise not_json_error(content_type)
        except APIError as exc:
            await error_response(exc)(scope, receive, send)
            return
        guarded = _guarded(receive, limit, content_type, json_only=not upload)
        await self.app(scope, guarded, send)

    def _check_host(self, host: str | None) -> None:
        if self.allowed_hosts is None:
            return
        name = _host_of(host or "").lower()
        if name not in self.allowed_hosts:
            raise InvalidRequest(
                f"Invalid Host header {host!r}: this server answers to "
                f"{', '.join(sorted(self.allowed_hosts))} (OPENGROVE_ALLOWED_HOSTS)."
            )


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )


def _guarded(receive: Receive, limit: int, content_type: str | None, *, json_only: bool) -> Receive:
    """`receive` that refuses, as the body arrives: more than `limit` bytes; on JSON routes,
    a body not declared as JSON (FastAPI would parse one sent with no Content-Type), and
    `\u0000` in it (PostgreSQL text and JSON cannot store it)."""
    received = 0
    tail = b""
    is_json = _is_json(content_type)

    async def guarded() -> Message:
        nonlocal received, tail
        message = await receive()
        if message["type"] == "http.request":
            chunk: bytes = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                raise BodyRefused(RequestTooLarge(limit))
            if json_only and chunk:
                if not is_json:
                    raise BodyRefused(not_json_error(content_type))
                window = tail + chunk
                if b"\\u0000" in window and _NUL_ESCAPE.search(window):
                    raise BodyRefused(
                        InvalidRequest(
                            "Invalid body: strings may not contain the NUL character (\\u0000)."
                        )
                    )
                tail = window[-16:]  # an escape split across two chunks is still seen
        return message

    return guarded
