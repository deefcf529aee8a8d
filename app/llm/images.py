"""Image URLs downloaded by the server itself, so that no provider (or litellm on its behalf)
ever fetches a URL a client chose.

`ImageFetcher.fetch` resolves the URL's host once through `ImageUrlPolicy` (every address
must be allowed) and connects to exactly those addresses — the IP literal is requested, with
the host name in `Host` and as the TLS server name (SNI, certificate check) — so a DNS answer
that changes between the check and the connection cannot redirect it. Redirects are followed
by hand, each `Location` checked again; the body is streamed and cut off past the size cap;
the whole download has one deadline. No credentials, cookies or proxies are ever used, and no
connection is reused (a pooled connection is keyed by IP alone: it must not serve another
host name than the one its certificate was checked for).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import ssl
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import urljoin, urlsplit

import httpx

from app.image_urls import ImageTarget, ImageUrlPolicy, ImageUrlRefused, Resolver, system_resolver

logger = logging.getLogger("opengrove.images")

USER_AGENT = "opengrove-image-fetch/1"
ACCEPT = "image/png,image/jpeg,image/gif,image/webp;q=0.9,image/*;q=0.8"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_ADDRESSES = 4  # addresses of one host tried in turn when a connection is refused
SUPPORTED = "a PNG, JPEG, GIF or WEBP image"


class ImageFetchError(Exception):
    """A download that failed; `reason` is safe to show the client (the raw cause, which may
    name internal hosts, is chained and goes to the log)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Image:
    mime: str
    data: bytes

    def data_url(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


def sniff(data: bytes) -> str | None:
    """The image type the bytes start with: PNG, JPEG, GIF or WEBP (what OpenAI accepts)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


async def data_url(image: Image) -> str:
    """`image` as a data URL; a large one is encoded off the event loop."""
    if len(image.data) < 256 * 1024:
        return image.data_url()
    return await asyncio.to_thread(image.data_url)


def _same_address(host: str, address: str) -> bool:
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False


def _no_cookies() -> CookieJar:
    # A jar that takes nothing: one download's cookies never reach another.
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


class ImageFetcher:
    """Downloads image URLs under the policy's address rules. One per process (the runtime
    owns it, and closes it at shutdown)."""

    def __init__(
        self,
        policy: ImageUrlPolicy,
        *,
        max_bytes: int,
        timeout: float,
        max_redirects: int = 3,
        max_concurrent: int = 16,
        resolver: Resolver = system_resolver,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.policy = policy
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.resolver = resolver
        self._slots = asyncio.Semaphore(max_concurrent)  # bounds the bytes held in flight
        self._client = httpx.AsyncClient(
            verify=verify,
            trust_env=False,  # no proxies from the environment, no .netrc credentials
            follow_redirects=False,
            cookies=_no_cookies(),
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_concurrent, max_keepalive_connections=0),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str) -> Image:
        """The image at `url` (http/https); raises `ImageFetchError`, never hangs past the
        timeout (once a download slot is free)."""
        async with self._slots:
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._follow(url)
            except (TimeoutError, httpx.TimeoutException) as exc:
                raise ImageFetchError(
                    f"the download took longer than {self.timeout:g} seconds"
                ) from exc

    async def _follow(self, url: str) -> Image:
        for hop in range(self.max_redirects + 1):
            try:
                target = await self.policy.resolve(url, self.resolver)
            except ImageUrlRefused as refused:
                if hop == 0:
                    raise ImageFetchError(refused.reason) from refused
                raise ImageFetchError(f"it redirects to a refused URL: {refused.reason}") from (
                    refused
                )
            response = await self._send(url, target)
            try:
                location = response.headers.get("location")
                if response.status_code in REDIRECTS and location:
                    url = urljoin(url, location.strip())
                    continue
                return await self._read(response)
            finally:
                await response.aclose()
        raise ImageFetchError(f"it redirects more than {self.max_redirects} times")

    async def _send(self, url: str, target: ImageTarget) -> httpx.Response:
        """GET the URL from the target's resolved addresses, in turn, never by name."""
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {
            "Host": target.host_header,
            "Accept": ACCEPT,
            "Accept-Encoding": "identity",
            "User-Agent": USER_AGENT,
        }
        extensions = {} if target.is_ip_literal else {"sni_hostname": target.host}
        failure: Exception | None = None
        for address in target.addresses[:MAX_ADDRESSES]:
            literal = f"[{address.split('%', 1)[0]}]" if ":" in address else address
            pinned = httpx.URL(f"{target.scheme}://{literal}:{target.port}{path}")
            if not _same_address(pinned.host, address) or pinned.port not in (target.port, None):
                raise ImageFetchError("the URL could not be parsed")  # never another host
            request = httpx.Request("GET", pinned, headers=headers, extensions=extensions)
            try:
                return await self._client.send(request, stream=True)
            except httpx.ConnectError as exc:  # refused, unreachable, TLS failure: next one
                failure = exc
            except httpx.TimeoutException:
                raise
            except httpx.HTTPError as exc:
                raise ImageFetchError("the download failed") from exc
        raise ImageFetchError("could not connect to the image host") from failure

    async def _read(self, response: httpx.Response) -> Image:
        if response.status_code != 200:
            raise ImageFetchError(f"the image host answered HTTP {response.status_code}")
        media_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if not media_type.startswith("image/"):
            shown = media_type if media_type.isascii() and len(media_type) <= 100 else "other"
            raise ImageFetchError(f"it is not an image (content type {shown or 'missing'!r})")
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise ImageFetchError("the image host sent it compressed (Content-Encoding)")
        too_large = ImageFetchError(f"it is larger than {self.max_bytes} bytes")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise too_large
        body = bytearray()
        try:
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > self.max_bytes:
                    raise too_large  # the rest is never read: the connection is closed
        except httpx.TimeoutException:
            raise
        except httpx.HTTPError as exc:
            raise ImageFetchError("the download failed") from exc
        mime = sniff(bytes(body[:16]))
        if mime is None:
            raise ImageFetchError(f"it is not {SUPPORTED}")
        return Image(mime, bytes(body))
