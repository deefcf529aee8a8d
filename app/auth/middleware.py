"""Every request but /health shows a key (once keys exist) and stays within its rate limits.

A plain ASGI middleware, so a request without a valid key is refused before its body is
read (a 64 MB upload from a stranger costs nothing) and SSE responses are not buffered.
The caller lands in `scope["state"]["caller"]`; routes take it through `app.deps.Project`.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth.keys import ANONYMOUS, Caller, KeyRing, redact
from app.errors import APIError, error_response
from app.observability import context
from app.request_guard import header_values

logger = logging.getLogger("opengrove.auth")

NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). Keys are issued with "
    "`opengrove keys create --project NAME`."
)


class Admission(Protocol):
    """A rate limiter's answer: refused with an error, and headers for the response."""

    error: APIError | None
    headers: list[tuple[bytes, bytes]]


class Limiter(Protocol):
    async def admit(self, caller: Caller, method: str, path: str) -> Admission: ...


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _unauthorized(message: str, code: str = "invalid_api_key") -> APIError:
    return APIError(401, message, code=code)


class AuthMiddleware:
    """`keyring` and `limiter` come from the app's runtime (built at start, after this)."""

    def __init__(
        self, app: ASGIApp, *, allow_anonymous: bool, organization: str, open_paths: frozenset[str]
    ) -> None:
        self.app = app
        self.allow_anonymous = allow_anonymous
        self.organization = organization
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        runtime = scope["app"].state.runtime
        try:
            caller = await self._authenticate(scope, runtime.keyring)
            headers: list[tuple[bytes, bytes]] = []
            limiter: Limiter | None = runtime.rate_limiter
            if limiter is not None and caller.key_id is not None:
                admission = await limiter.admit(caller, scope["method"], scope["path"])
                headers = admission.headers
                if admission.error is not None:
                    await _refuse(send, admission.error, headers)
                    return
        except APIError as exc:
            await _refuse(send, exc, [])
            return
        scope.setdefault("state", {})["caller"] = caller
        context.project_id.set(caller.project_id)
        if not headers:
            await self.app(scope, receive, send)
            return

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        await self.app(scope, receive, send_with_limits)

    async def _authenticate(self, scope: Scope, keyring: KeyRing) -> Caller:
        authorization, project, organization = header_values(
            scope, b"authorization", b"openai-project", b"openai-organization"
        )
        if not await keyring.any_keys():
            if self.allow_anonymous:
                return ANONYMOUS
            raise _unauthorized(
                "This server has no API keys yet and is not bound to loopback. Issue one with "
                "`opengrove keys create --project NAME`."
            )
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise _unauthorized(NO_KEY)
        caller = await keyring.verify(key)
        if caller is None:
            raise _unauthorized(f"Incorrect API key provided: {redact(key)}.")
        if project and project not in (caller.project_id, caller.project_name):
            raise _unauthorized(
                "OpenAI-Project header should match project for API key.",
                code="mismatched_project",
            )
        if organization and organization != self.organization:
            raise _unauthorized(
                f"OpenAI-Organization header should match organization for API key "
                f"({self.organization}); leave it unset (OPENAI_ORG_ID) to use the default.",
                code="mismatched_organization",
            )
        return caller


async def _refuse(send: Send, error: APIError, headers: list[tuple[bytes, bytes]]) -> None:
    response = error_response(error)
    response.raw_headers.extend(headers)
    start = {"type": "http.response.start", "status": response.status_code}
    await send({**start, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})
