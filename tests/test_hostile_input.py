"""Requests a careless or hostile client sends: oversized and endless bodies, bodies not sent
as JSON, NUL characters, foreign Host headers. Each gets a clear OpenAI-shaped error, fast,
and the server stays up and consistent."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.app_server import AppServer, make_settings
from tests.fake_upstream import FakeReply, FakeUpstream
from tests.server_process import ServerProcess


def _raw_request(server: ServerProcess, head: str, body: bytes = b"") -> tuple[int, dict, float]:
    """Send a request by hand (headers may lie); the status, error body and seconds taken."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        sock.shutdown(socket.SHUT_WR) if not body else None
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    elapsed = time.monotonic() - started
    status = int(data.split(b" ", 2)[1])
    payload = json.loads(data.split(b"\r\n\r\n", 1)[1] or b"{}")
    return status, payload, elapsed


def test_a_declared_64_mb_body_is_refused_before_it_is_read(server: ServerProcess) -> None:
    head = (
        "POST /v1/assistants HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nContent-Length: 67108864\r\n\r\n"
    )
    status, body, seconds = _raw_request(server, head, b'{"model": "gpt-4o", ')
    assert status == 413
    assert body["error"]["code"] == "request_too_large"
    assert "10485760" in body["error"]["message"]
    assert seconds < 2  # answered without waiting for the 64 MB


def test_a_streamed_body_past_the_cap_is_cut_off(http: httpx.Client) -> None:
    def endless() -> Iterator[bytes]:
        yield b'{"model": "gpt-4o", "instructions": "'
        for _ in range(12 * 1024):  # 12 MB of instructions, more than the 10 MB cap
            yield b"x" * 1024
        yield b'"}'

    response = http.post(
        "/assistants", content=endless(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert http.get("/models").status_code == 200  # still serving


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_json_routes_need_a_json_content_type(
    server: ServerProcess, content_type: str | None
) -> None:
    # What a web page can send cross-origin without a preflight: no JSON content type.
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"model": "gpt-4o", "name": "from a web page"}).encode()
    response = httpx.post(f"{server.base_url}/v1/assistants", content=body, headers=headers)
    assert response.status_code == 400
    assert "Content-Type: application/json" in response.json()["error"]["message"]
    listed = httpx.get(f"{server.base_url}/v1/assistants", params={"limit": 100}).json()
    assert "from a web page" not in {a["name"] for a in listed["data"]}


def test_bodiless_posts_need_no_content_type(client: openai.OpenAI) -> None:
    assert client.beta.threads.create().id.startswith("thread_")  # SDK: no body at all


def test_nul_characters_are_refused_not_stored(client: openai.OpenAI, http: httpx.Client) -> None:
    thread = client.beta.threads.create()
    for payload in (
        {"role": "user", "content": "before\u0000after"},
        {"role": "user", "content": "x", "metadata": {"k": "\u0000"}},
    ):
        response = http.post(f"/threads/{thread.id}/messages", json=payload)
        assert response.status_code == 400, response.text
        assert "NUL" in response.json()["error"]["message"]
    # A backslash followed by "u0000" is text, not a NUL.
    kept = http.post(
        f"/threads/{thread.id}/messages", json={"role": "user", "content": "C:\\u0000"}
    )
    assert kept.status_code == 200
    assert [m.content[0].text.value for m in client.beta.threads.messages.list(thread.id).data] == [
        "C:\\u0000"
    ]


@pytest.mark.parametrize("host", ["evil.example", "rebind.attacker.test:8000", "10.0.0.1"])
def test_a_loopback_server_refuses_foreign_host_headers(server: ServerProcess, host: str) -> None:
    response = httpx.get(f"{server.base_url}/v1/models", headers={"Host": host})
    assert response.status_code == 400
    assert "Invalid Host header" in response.json()["error"]["message"]
    for ok in ("127.0.0.1", "localhost", f"localhost:{server.port}", "[::1]:80"):
        assert httpx.get(f"{server.base_url}/v1/models", headers={"Host": ok}).status_code == 200


@pytest.fixture(scope="module")
def small_upload_server(
    tmp_path_factory: pytest.TempPathFactory, database_url: str
) -> Iterator[AppServer]:
    data_dir = tmp_path_factory.mktemp("small-upload")
    settings = make_settings(data_dir, database_url, max_file_bytes=64 * 1024)
    with AppServer(settings) as server:
        yield server


def test_an_endless_upload_is_cut_off(small_upload_server: AppServer) -> None:
    """A multipart body that never ends: answered 413 once past the file limit plus the form
    allowance, and the connection closed, instead of being drained forever."""
    head = (
        "POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    form = (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
    )
    piece = b"z" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    reply = b""
    with socket.create_connection(("127.0.0.1", small_upload_server.port), timeout=10) as sock:
        sock.sendall(head.encode() + f"{len(form):x}\r\n".encode() + form + b"\r\n")
        sock.setblocking(False)
        try:
            while sent < 64 * 1024 * 1024 and not reply:
                try:
                    sent += sock.send(chunk)
                except BlockingIOError:
                    time.sleep(0.001)
                try:
                    reply = sock.recv(65536)
                except BlockingIOError:
                    pass
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.setblocking(True)
        try:
            while reply.count(b"\r\n\r\n") < 1 or not reply.rstrip().endswith(b"}"):
                more = sock.recv(65536)
                if not more:
                    break
                reply += more
        except ConnectionResetError:
            pass  # the server closed with our bytes unread: a reset may overtake its reply
    if reply:
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"request_too_large" in reply
    assert sent < 16 * 1024 * 1024  # the server answered long before the 64 MB were sent
    files_dir: Path = small_upload_server.settings.files_dir
    assert not any(p.is_file() for p in files_dir.rglob("*"))


@pytest.mark.parametrize(
    "url",
    [
        "http://images.example.net/a.png",  # not https
        "file:///etc/passwd",
        "ftp://images.example.net/a.png",
        "https://no-such-host.invalid/a.png",  # cannot be resolved
        "https://127.0.0.1/a.png",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.1/a.png",
        "https://[::1]/a.png",
        "https://localhost/a.png",
        "https://[::ffff:127.0.0.1]/a.png",
        "data:text/html;base64,PHNjcmlwdD4=",
    ],
)
def test_image_urls_that_would_reach_private_places_are_refused(
    client: openai.OpenAI, url: str
) -> None:
    thread = client.beta.threads.create()
    content = [{"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.beta.threads.messages.create(thread.id, role="user", content=content)
    assert refused.value.param == "content[0].image_url.url"
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.create(messages=[{"role": "user", "content": content}])
    assert client.beta.threads.messages.list(thread.id).data == []


def test_inline_image_data_is_accepted(client: openai.OpenAI) -> None:
    png = (
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8Dw"
        "HwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
    )
    thread = client.beta.threads.create()
    message = client.beta.threads.messages.create(
        thread.id, role="user", content=[{"type": "image_url", "image_url": {"url": png}}]
    )
    assert message.content[0].image_url.url == png


def test_provider_error_text_stays_in_the_log(
    client: openai.OpenAI, upstream: FakeUpstream, server: ServerProcess
) -> None:
    leaky = "upstream db at 10.1.2.3:5432 rejected key sk-live-0123456789abcdef"
    upstream.script(*[FakeReply(status=400, error_message=leaky) for _ in range(3)])
    assistant = client.beta.assistants.create(model="fake-model")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
    )
    assert run.status == "failed" and run.last_error is not None
    assert run.last_error.message == "The model provider returned an error (HTTP 400)."
    assert "10.1.2.3" not in run.model_dump_json()
    log = server.log()
    assert "10.1.2.3" in log  # the operator still sees why
    assert "sk-live-0123456789abcdef" not in log  # but never a key


def _limit_cases(thread: str, run: str, store: str) -> list[tuple[str, str, dict, str]]:
    message = {"role": "user", "content": "x"}
    return [
        ("POST", "/assistants", {"model": "gpt-4o", "instructions": "i" * 256_001}, "instructions"),
        (
            "POST",
            f"/threads/{thread}/runs",
            {"assistant_id": "asst_x", "instructions": "i" * 256_001},
            "instructions",
        ),
        (
            "POST",
            f"/threads/{thread}/runs",
            {"assistant_id": "asst_x", "additional_instructions": "i" * 256_001},
            "additional_instructions",
        ),
        (
            "POST",
            f"/threads/{thread}/runs",
            {"assistant_id": "asst_x", "additional_messages": [message] * 101},
            "additional_messages",
        ),
        ("POST", "/threads", {"messages": [message] * 101}, "messages"),
        (
            "POST",
            f"/threads/{thread}/messages",
            {"role": "user", "content": [{"type": "text", "text": "t"}] * 101},
            "content",
        ),
        (
            "POST",
            f"/threads/{thread}/messages",
            {"role": "user", "content": "x", "attachments": [{"file_id": "f", "tools": []}] * 21},
            "attachments",
        ),
        (
            "POST",
            f"/threads/{thread}/runs/{run}/submit_tool_outputs",
            {"tool_outputs": [{"tool_call_id": "c", "output": "o"}] * 129},
            "tool_outputs",
        ),
        (
            "POST",
            f"/threads/{thread}/runs/{run}/submit_tool_outputs",
            {"tool_outputs": [{"tool_call_id": "c", "output": "o" * 1_000_001}]},
            "tool_outputs[0].output",
        ),
        ("POST", f"/vector_stores/{store}/search", {"query": "q" * 4097}, "query"),
        ("POST", "/vector_stores", {"file_ids": ["f"] * 501}, "file_ids"),
    ]


def test_documented_field_limits(client: openai.OpenAI, http: httpx.Client) -> None:
    thread = client.beta.threads.create().id
    store = client.vector_stores.create(name="limits").id
    for method, path, body, param in _limit_cases(thread, "run_x", store):
        response = http.request(method, path, json=body)
        assert response.status_code == 400, (path, param, response.text[:300])
        assert response.json()["error"]["param"] == param, (path, response.text[:300])


def test_a_multipart_header_without_end_is_refused(http: httpx.Client) -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="purpose"; x="' + b"h" * 20_000
    response = http.post(
        "/files", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 400
    assert "header is longer than" in response.json()["error"]["message"]
