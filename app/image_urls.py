"""Which image URLs the server accepts and fetches: the one place for the address rules.

An `image_url` part is checked when its message is stored (`ImageUrlPolicy.check`), and
again, with every redirect, when the run's prompt is built and the server downloads the image
itself (`ImageUrlPolicy.resolve`, used by `app.llm.images`): providers are sent the bytes, not
the URL.

By default only `https://` URLs whose host resolves to public addresses, and inline
`data:image/…;base64,` URLs. Loopback, private, link-local (cloud metadata) and other
special addresses are refused; an operator can allow hosts by name (`OPENGROVE_IMAGE_URL_HOSTS`,
e.g. an internal image server; those may resolve to any address and may also use `http://`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from app.errors import InvalidRequest

MAX_URL_CHARS = 20 * 1024 * 1024  # a data URL of a 15 MB image, base64
DEFAULT_PORTS = {"https": 443, "http": 80}

# host, port → the host's addresses (IP literals); raises OSError when it cannot resolve.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses as the operating system resolves them (in its order)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class ImageUrlRefused(Exception):
    """A URL the policy refuses; `reason` (safe to show the client) says why."""

    def __init__(self, reason: str, *, code: str | None = "invalid_image_url") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class ImageTarget:
    """Where a URL may be fetched: its host (lowercase, ASCII), port, and the addresses the
    host resolved to, every one allowed. Connect to these, never to the name again."""

    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...] = ()

    @property
    def is_ip_literal(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS.get(self.scheme) == self.port else f"{host}:{self.port}"


class ImageUrlPolicy:
    def __init__(self, allowed_hosts: Collection[str] = ()) -> None:
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)

    def target(self, url: str) -> tuple[ImageTarget, bool]:
        """The URL's scheme, host and port, and whether the host is operator-allowed; refused
        unless the scheme is one the host may use."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        allowed = host in self.allowed_hosts
        if parts.scheme != "https" and not (allowed and parts.scheme == "http"):
            raise ImageUrlRefused(
                "only https:// image URLs (or data:image/…;base64 URLs) are accepted"
            )
        if not host:
            raise ImageUrlRefused("the URL has no host", code=None)
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
            ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
        except (ValueError, UnicodeError):
            raise ImageUrlRefused(f"the image host {host!r} could not be resolved") from None
        return ImageTarget(parts.scheme, ascii_host, port), allowed

    async def resolve(self, url: str, resolver: Resolver = system_resolver) -> ImageTarget:
        """Where the server may fetch this URL: the host resolved once, every address allowed
        (public, or any for an operator-allowed host). Raises `ImageUrlRefused`."""
        target, allowed = self.target(url)
        try:
            addresses = tuple(await resolver(target.host, target.port))
        except (OSError, UnicodeError):
            addresses = ()
        if not addresses:
            raise ImageUrlRefused(f"the image host {target.host!r} could not be resolved")
        if not allowed and not all(_public(address) for address in addresses):
            raise ImageUrlRefused(
                f"the image host {target.host!r} is not a public address (loopback, private, "
                "link-local and metadata addresses are refused)"
            )
        return ImageTarget(target.scheme, target.host, target.port, addresses)

    async def check(self, url: str, param: str) -> None:
        """400 unless the URL is one the server may fetch (when a message is stored; an
        operator-allowed host is not resolved here)."""
        if len(url) > MAX_URL_CHARS:
            raise InvalidRequest(f"Invalid '{param}': URL too long.", param=param)
        if url.startswith("data:"):
            if not url.startswith("data:image/") or ";base64," not in url[:100]:
                raise InvalidRequest(
                    f"Invalid '{param}': a data URL must be data:image/<type>;base64,<data>.",
                    param=param,
                    code="invalid_image_url",
                )
            return
        try:
            _, allowed = self.target(url)
            if not allowed:
                await self.resolve(url)
        except ImageUrlRefused as refused:
            raise InvalidRequest(
                f"Invalid '{param}': {refused.reason}.", param=param, code=refused.code
            ) from None

    async def check_messages(self, messages: Iterable[Any], param: str) -> None:
        """Every image_url part of these request messages (`MessageCreate`s)."""
        for i, message in enumerate(messages):
            content = message.content if isinstance(message.content, list) else []
            for j, part in enumerate(content):
                if part.type == "image_url":
                    where = (
                        f"{param}[{i}].content[{j}].image_url.url"
                        if param
                        else (f"content[{j}].image_url.url")
                    )
                    await self.check(part.image_url.url, where)
