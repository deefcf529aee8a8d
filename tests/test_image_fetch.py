"""Images reach models as bytes the server fetched itself (app/llm/images.py, app/runs/images.py).

A real HTTP(S) image server on loopback. In-process, `ImageFetcher` with a resolver given as a
parameter (there is no DNS here): the connection goes to the address the policy checked, every
redirect is checked again, size, type and time are capped, nothing of ours is sent. Through
the SDK against a running server: an image_url and an image_file reach each wire dialect of the
fake upstream as data, and a refused image fails the run with a stable `last_error`.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import shutil
import ssl
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import openai
import pytest

from app.db import Database
from app.image_urls import ImageUrlPolicy
from app.llm.adapter import IMAGE_TOKENS, count_tokens
from app.llm.images import ImageFetcher, ImageFetchError
from app.runs.images import SOURCE, PromptImages
from tests.conftest import own_server_client
from tests.fake_upstream import ANTHROPIC, DIALECTS, OLLAMA, OPENAI, FakeUpstream, RecordedRequest

ALIASES = {OPENAI: "fake-model", ANTHROPIC: "fake-anthropic", OLLAMA: "fake-ollama"}
MAX_BYTES = 1024 * 1024  # the test server's OPENGROVE_IMAGE_FETCH_MAX_BYTES
FETCH_TIMEOUT = 3  # the test server's OPENGROVE_IMAGE_FETCH_TIMEOUT
HUGE = 256 * 1024 * 1024  # what /huge would send if it were read to the end


def png(seed: int = 0) -> bytes:
    """A valid 2x2 RGB PNG (its pixels vary with `seed`)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(b"\x00" + bytes([seed % 256, 0, 255 - seed % 256] * 2) for _ in range(2))
    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


CAT = png(7)


class ImageServer:
    """Test images over real HTTP (or HTTPS), recording each request's path and headers."""

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.sent: dict[str, int] = {}
        self.streamed = collections.defaultdict(threading.Event)  # path → stream ended
        self.stopping = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests.append((self.path, dict(self.headers)))
                owner.handle(self)

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str, host: str = "localhost") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        path, _, query = h.path.partition("?")
        if path == "/cat.png":
            self.reply(h, 200, "image/png", CAT, extra={"Set-Cookie": "session=s3cret; Path=/"})
        elif path == "/lying.png":  # says PNG, is HTML
            self.reply(h, 200, "image/png", b"<html><body>not an image</body></html>")
        elif path == "/page.html":
            self.reply(h, 200, "text/html; charset=utf-8", b"<html></html>")
        elif path == "/missing.png":
            self.reply(h, 404, "text/plain", b"no")
        elif path == "/to":
            target = parse_qs(query)["url"][0]
            self.reply(h, 302, "text/plain", b"", extra={"Location": target})
        elif path == "/loop":
            self.reply(h, 302, "text/plain", b"", extra={"Location": "/loop"})
        elif path == "/huge":
            self.stream(h, path, CAT[:16], chunk=b"\x00" * 65536, total=HUGE, delay=0)
        elif path == "/declared-huge":
            h.send_response(200)
            h.send_header("Content-Type", "image/png")
            h.send_header("Content-Length", str(HUGE))
            h.end_headers()
            self.stream(h, path, CAT[:16], chunk=b"\x00" * 65536, total=HUGE, delay=0, head=False)
        elif path == "/drip":
            self.stream(h, path, CAT[:16], chunk=b"\x00", total=HUGE, delay=0.05)
        elif path == "/stall":
            self.stopping.wait(30)
        else:
            self.reply(h, 404, "text/plain", b"")

    @staticmethod
    def reply(
        h: BaseHTTPRequestHandler,
        status: int,
        content_type: str,
        body: bytes,
        extra: dict[str, str] | None = None,
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body)

    def stream(
        self,
        h: BaseHTTPRequestHandler,
        path: str,
        first: bytes,
        *,
        chunk: bytes,
        total: int,
        delay: float,
        head: bool = True,
    ) -> None:
        """Send `first`, then `chunk` after `chunk` until `total` bytes or the client leaves."""
        if head:
            h.send_response(200)
            h.send_header("Content-Type", "image/png")
            h.end_headers()  # no length: the body ends when the connection does
        sent = 0
        try:
            h.wfile.write(first)
            sent = len(first)
            while sent < total and not self.stopping.is_set():
                h.wfile.write(chunk)
                h.wfile.flush()
                sent += len(chunk)
                if delay:
                    time.sleep(delay)
        except OSError:
            pass  # the client hung up: what we counted is what it could have read
        finally:
            self.sent[path] = sent
            self.streamed[path].set()


def resolving_to(*addresses: str) -> Any:
    """A resolver (host, port → addresses) answering every name with `addresses`,
    counting its calls: stands in for DNS, which this machine does not have."""

    async def resolve(host: str, port: int) -> list[str]:
        resolve.calls.append(host)  # type: ignore[attr-defined]
        return list(addresses)

    resolve.calls = []  # type: ignore[attr-defined]
    return resolve


@pytest.fixture
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


def fetcher(allowed: tuple[str, ...] = ("localhost",), **kw: Any) -> ImageFetcher:
    options: dict[str, Any] = {"max_bytes": MAX_BYTES, "timeout": 2.0} | kw
    return ImageFetcher(ImageUrlPolicy(allowed), **options)


async def refused(fetch: ImageFetcher, url: str) -> str:
    with pytest.raises(ImageFetchError) as failure:
        await fetch.fetch(url)
    return failure.value.reason


# ---- the fetcher, in process -----------------------------------------------------------------


async def test_fetch_connects_to_the_checked_address_only() -> None:
    """DNS rebinding needs a second lookup: there is none. The name is resolved once, and the
    connection goes to that address (here 127.0.0.2, where the system resolver would never
    send `localhost`), with the name in the Host header."""
    with ImageServer(host="127.0.0.2") as server:
        resolver = resolving_to("127.0.0.2")
        fetch = fetcher(resolver=resolver)
        try:
            image = await fetch.fetch(server.url("/cat.png?size=small"))
            assert (image.mime, image.data) == ("image/png", CAT)
            assert resolver.calls == ["localhost"]
            assert server.requests[-1][0] == "/cat.png?size=small"
            assert server.requests[-1][1]["Host"] == f"localhost:{server.port}"
        finally:
            await fetch.aclose()
        unpinned = fetcher()  # the system's answer for localhost is 127.0.0.1: nobody there
        try:
            assert await refused(unpinned, server.url("/cat.png")) == (
                "could not connect to the image host"
            )
        finally:
            await unpinned.aclose()
        assert len(server.requests) == 1


async def test_an_answer_with_any_private_address_is_refused() -> None:
    with ImageServer() as server:
        for answer in (["127.0.0.1"], ["93.184.216.34", "10.0.0.1"], ["::1"], ["169.254.169.254"]):
            fetch = fetcher(allowed=(), resolver=resolving_to(*answer))
            try:
                reason = await refused(fetch, f"https://images.example:{server.port}/cat.png")
            finally:
                await fetch.aclose()
            assert reason.startswith("the image host 'images.example' is not a public address")
        assert server.requests == []


async def test_redirects_are_checked_again(images: ImageServer) -> None:
    fetch = fetcher()
    try:
        for target in (
            f"http://127.0.0.1:{images.port}/cat.png",  # not an allowed host: no http, private
            "https://127.0.0.1/cat.png",
            "https://169.254.169.254/latest/meta-data/",
            "https://10.1.2.3/cat.png",
            "https://[::1]/cat.png",
            "file:///etc/passwd",
        ):
            reason = await refused(fetch, images.url(f"/to?url={target}"))
            assert reason.startswith("it redirects to a refused URL: "), reason
        assert "/cat.png" not in images.paths()
        assert await refused(fetch, images.url("/loop")) == "it redirects more than 3 times"
        assert images.paths().count("/loop") == 4
        # A redirect the policy allows is followed.
        image = await fetch.fetch(images.url(f"/to?url={images.url('/cat.png')}"))
        assert image.data == CAT
    finally:
        await fetch.aclose()


async def test_size_cap_stops_reading(images: ImageServer) -> None:
    fetch = fetcher()
    try:
        started = time.monotonic()
        assert await refused(fetch, images.url("/huge")) == f"it is larger than {MAX_BYTES} bytes"
        assert await refused(fetch, images.url("/declared-huge")) == (
            f"it is larger than {MAX_BYTES} bytes"
        )
        assert time.monotonic() - started < 10
    finally:
        await fetch.aclose()
    for path in ("/huge", "/declared-huge"):
        assert await asyncio.to_thread(images.streamed[path].wait, 10)
        # The server gave up once the socket buffers were full: nowhere near the 256 MB.
        assert images.sent[path] < 64 * 1024 * 1024, (path, images.sent[path])


async def test_what_is_not_an_image_is_refused(images: ImageServer) -> None:
    fetch = fetcher()
    try:
        assert await refused(fetch, images.url("/page.html")) == (
            "it is not an image (content type 'text/html')"
        )
        assert await refused(fetch, images.url("/lying.png")) == (
            "it is not a PNG, JPEG, GIF or WEBP image"
        )
        assert await refused(fetch, images.url("/missing.png")) == (
            "the image host answered HTTP 404"
        )
    finally:
        await fetch.aclose()


async def test_slow_servers_time_out(images: ImageServer) -> None:
    """One deadline for the whole download: a server that trickles bytes (each read quick)
    is cut off as surely as one that never answers."""
    fetch = fetcher(timeout=0.75)
    try:
        for path in ("/stall", "/drip"):
            started = time.monotonic()
            reason = await refused(fetch, images.url(path))
            assert reason == "the download took longer than 0.75 seconds"
            assert time.monotonic() - started < 3
    finally:
        await fetch.aclose()


async def test_nothing_of_ours_is_sent(images: ImageServer) -> None:
    """No cookies kept between downloads, no credentials (not even the URL's own)."""
    fetch = fetcher()
    try:
        await fetch.fetch(images.url("/cat.png"))  # answers with a Set-Cookie
        await fetch.fetch(f"http://user:password@localhost:{images.port}/cat.png")
    finally:
        await fetch.aclose()
    for _, headers in images.requests:
        lowered = {name.lower() for name in headers}
        assert not lowered & {"cookie", "authorization", "proxy-authorization"}, headers


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for images.test: (cert, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=images.test", "-addext", "subjectAltName=DNS:images.test"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_is_verified_against_the_host_name(certificate: tuple[Path, Path]) -> None:
    """The IP literal is requested, yet TLS sends the host name (SNI) and checks the
    certificate against it: a certificate for another name is refused."""
    cert, key = certificate
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    names: list[str | None] = []
    tls.sni_callback = lambda sock, name, context: names.append(name)  # type: ignore[assignment]
    trust = ssl.create_default_context(cafile=str(cert))
    with ImageServer(tls=tls) as server:
        fetch = fetcher(
            allowed=("images.test", "other.test"), resolver=resolving_to("127.0.0.1"), verify=trust
        )
        try:
            image = await fetch.fetch(server.url("/cat.png", host="images.test"))
            assert image.data == CAT
            assert names == ["images.test"]
            assert server.requests[-1][1]["Host"] == f"images.test:{server.port}"
            reason = await refused(fetch, server.url("/cat.png", host="other.test"))
            assert reason == "could not connect to the image host"
        finally:
            await fetch.aclose()
        assert len(server.requests) == 1


async def test_pass_mode_hands_urls_on_untouched(tmp_path: Path) -> None:
    """OPENGROVE_IMAGE_URLS=pass: no download; only our own tag is removed."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        images = PromptImages(db, tmp_path, None, MAX_BYTES)
        url = {"url": "https://images.example/a.png", "detail": "low"}
        part = {"type": "image_url", "image_url": url, SOURCE: "content[0]… of message msg_1"}
        prompt = [{"role": "user", "content": [part]}]
        inlined = await images.inline(prompt, "default", {})
        assert inlined == [{"role": "user", "content": [{"type": "image_url", "image_url": url}]}]
    finally:
        await db.dispose()


# ---- runs through the SDK --------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_server() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


@pytest.fixture(scope="module")
def image_client(
    tmp_path_factory: pytest.TempPathFactory,
    fake_upstream: FakeUpstream,
    image_server: ImageServer,
) -> Iterator[openai.OpenAI]:
    """A server that may fetch images from `localhost` (its own database: no other worker
    runs its runs), with a small size cap and a short timeout."""
    with own_server_client(
        tmp_path_factory.mktemp("image-fetch"),
        fake_upstream,
        OPENGROVE_IMAGE_URL_HOSTS="example.com,localhost",
        OPENGROVE_IMAGE_FETCH_MAX_BYTES=str(MAX_BYTES),
        OPENGROVE_IMAGE_FETCH_TIMEOUT=str(FETCH_TIMEOUT),
    ) as sdk:
        yield sdk


def run_on(client: openai.OpenAI, model: str, content: list[dict[str, Any]]) -> tuple[Any, Any]:
    assistant = client.beta.assistants.create(model=model)
    thread = client.beta.threads.create()
    message = client.beta.threads.messages.create(thread.id, role="user", content=content)  # type: ignore[arg-type]
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
    )
    client.beta.assistants.delete(assistant.id)
    return run, message


def images_sent(record: RecordedRequest) -> list[tuple[str | None, bytes, str | None]]:
    """(mime, bytes, detail) of every image in a chat request, in its dialect's format."""
    found: list[tuple[str | None, bytes, str | None]] = []
    for message in record.body["messages"]:
        content = message.get("content")
        if record.dialect == OLLAMA:
            for data in message.get("images") or []:
                assert not data.startswith(("data:", "http")), "Ollama takes bare base64"
                found.append((None, base64.b64decode(data), None))
        for part in content if isinstance(content, list) else []:
            if part.get("type") == "image_url":
                url = part["image_url"]["url"]
                assert url.startswith("data:"), "a URL went to the provider"
                head, _, data = url.partition(",")
                mime = head.removeprefix("data:").removesuffix(";base64")
                found.append((mime, base64.b64decode(data), part["image_url"].get("detail")))
            elif part.get("type") == "image":
                source = part["source"]
                assert source["type"] == "base64", "a URL went to the provider"
                found.append((source["media_type"], base64.b64decode(source["data"]), None))
    return found


@pytest.mark.parametrize("dialect", DIALECTS)
def test_image_url_reaches_the_model_as_bytes(
    image_client: openai.OpenAI, upstream: FakeUpstream, image_server: ImageServer, dialect: str
) -> None:
    before = len(image_server.requests)
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": image_server.url("/cat.png"), "detail": "low"}},
    ]
    run, message = run_on(image_client, ALIASES[dialect], content)
    assert run.status == "completed", run.last_error
    (record,) = [r for r in upstream.recorded if r.dialect == dialect]
    expected_detail = "low" if dialect == OPENAI else None
    mime = None if dialect == OLLAMA else "image/png"
    assert images_sent(record) == [(mime, CAT, expected_detail)]
    # Downloaded once, by us (litellm fetched nothing); the client's message is unchanged.
    assert image_server.paths()[before:] == ["/cat.png"]
    assert image_server.requests[-1][1]["User-Agent"].startswith("opengrove-image-fetch/")
    assert message.content[1].image_url.url == image_server.url("/cat.png")


def test_image_file_reaches_the_model_as_bytes(
    image_client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    picture = png(99)
    uploaded = image_client.files.create(file=("photo.png", picture), purpose="vision")
    content = [
        {"type": "image_file", "image_file": {"file_id": uploaded.id, "detail": "high"}},
        {"type": "text", "text": "Describe it."},
    ]
    run, _ = run_on(image_client, "fake-model", content)
    assert run.status == "completed", run.last_error
    assert images_sent(upstream.recorded[-1]) == [("image/png", picture, "high")]


def test_a_deleted_image_file_is_named_not_sent(
    image_client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    uploaded = image_client.files.create(file=("photo.png", png(3)), purpose="vision")
    thread = image_client.beta.threads.create(
        messages=[
            {
                "role": "user",
                "content": [{"type": "image_file", "image_file": {"file_id": uploaded.id}}],
            }
        ]
    )
    image_client.files.delete(uploaded.id)
    assistant = image_client.beta.assistants.create(model="fake-model")
    run = image_client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
    )
    assert run.status == "completed", run.last_error
    (user,) = [m for m in upstream.recorded[-1].body["messages"] if m["role"] == "user"]
    assert user["content"] == [{"type": "text", "text": f"[image file {uploaded.id}: deleted]"}]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/to?url=https://169.254.169.254/latest/meta-data/", "it redirects to a refused URL: "),
        ("/to?url=http://127.0.0.1:1/cat.png", "it redirects to a refused URL: "),
        ("/huge", f"it is larger than {MAX_BYTES} bytes"),
        ("/page.html", "it is not an image (content type 'text/html')"),
        ("/stall", f"the download took longer than {FETCH_TIMEOUT} seconds"),
    ],
)
def test_a_refused_image_fails_the_run(
    image_client: openai.OpenAI,
    upstream: FakeUpstream,
    image_server: ImageServer,
    path: str,
    reason: str,
) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": image_server.url(path)}},
    ]
    started = time.monotonic()
    run, message = run_on(image_client, "fake-model", content)
    assert time.monotonic() - started < 15
    assert run.status == "failed"
    assert run.last_error.code == "invalid_prompt"
    prefix = f"Could not download the image at content[1].image_url.url of message {message.id}: "
    assert run.last_error.message.startswith(prefix + reason), run.last_error.message
    assert upstream.recorded == []  # the model was never called
    # The server is fine, and the next run works.
    root = str(image_client.base_url).rsplit("/v1", 1)[0]
    assert httpx.get(f"{root}/health").json()["status"] == "ok"
    run, _ = run_on(image_client, "fake-model", [{"type": "text", "text": "still there?"}])
    assert run.status == "completed", run.last_error


def test_counting_tokens_fetches_nothing(images: ImageServer) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": images.url("/cat.png")}},
        {"type": "image_file", "image_file": {"file_id": "file-abc"}},
    ]
    counted = count_tokens("gpt-4o", [{"role": "user", "content": content}])
    assert counted >= 2 * IMAGE_TOKENS
    assert images.requests == []


def test_cancelling_a_run_ends_its_download(
    image_client: openai.OpenAI, upstream: FakeUpstream, image_server: ImageServer
) -> None:
    assistant = image_client.beta.assistants.create(model="fake-model")
    thread = image_client.beta.threads.create()
    url = image_server.url("/stall?cancel")
    image_client.beta.threads.messages.create(
        thread.id, role="user", content=[{"type": "image_url", "image_url": {"url": url}}]
    )
    run = image_client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    deadline = time.monotonic() + 10
    while "/stall?cancel" not in image_server.paths() and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    image_client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    run = image_client.beta.threads.runs.poll(run.id, thread_id=thread.id, poll_interval_ms=20)
    assert run.status == "cancelled", run.last_error
    assert time.monotonic() - started < FETCH_TIMEOUT / 2  # not when the download timed out
    assert upstream.recorded == []
