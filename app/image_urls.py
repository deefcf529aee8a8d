"""Which `image_url` parts a message may carry: the model's provider (or litellm, for
providers that take bytes) fetches them, so a URL is a request the server makes for the client.

By default only `https://` URLs whose host resolves to public addresses, and inline
`data:image/…;base64,` URLs. Loopback, private, link-local (cloud metadata) and other
special addresses are refused; an operator can allow hosts by name (`OPENGROVE_IMAGE_URL_HOSTS`,
e.g. an internal image server; those may also use `http://`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Collection, Iterable
from typing import Any
from urllib.parse import urlsplit

from app.errors import InvalidRequest

MAX_URL_CHARS = 20 * 1024 * 1024  # a data URL of a 15 MB image, base64


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class ImageUrlPolicy:
    def __init__(self, allowed_hosts: Collection[str] = ()) -> None:
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)

    async def check(self, url: str, param: str) -> None:
        """400 unless the URL is one the server may let a provider fetch."""
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
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        allowed = host in self.allowed_hosts
        if parts.scheme != "https" and not (allowed and parts.scheme == "http"):
            raise InvalidRequest(
                f"Invalid '{param}': only https:// image URLs (or data:image/…;base64 URLs) "
                "are accepted.",
                param=param,
                code="invalid_image_url",
            )
        if not host:
            raise InvalidRequest(f"Invalid '{param}': the URL has no host.", param=param)
        if allowed:
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, parts.port or 443, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError):
            raise InvalidRequest(
                f"Invalid '{param}': the image host {host!r} could not be resolved.",
                param=param,
                code="invalid_image_url",
            ) from None
        if not infos or not all(_public(str(info[4][0])) for info in infos):
            raise InvalidRequest(
                f"Invalid '{param}': the image host {host!r} is not a public address "
                "(loopback, private, link-local and metadata addresses are refused).",
                param=param,
                code="invalid_image_url",
            )

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
