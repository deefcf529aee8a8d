"""Streaming multipart/form-data for `POST /files`: the file part goes straight to disk.

The body is parsed as it arrives (python-multipart's push parser); file bytes are
written to a temporary file next to their final place, hashed and counted on the
way, so an upload never sits in memory whole and an oversized one stops being
stored the moment it passes the limit. The rest of an oversized body is read and
discarded so the client gets the 400 instead of a reset connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import unquote

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from app.errors import InvalidRequest

FILE_FIELD = "file"
MAX_FILENAME_LENGTH = 1024
MAX_FIELD_BYTES = 64 * 1024  # a non-file form field (purpose, expires_after[...])
MAX_PARTS = 32


@dataclass
class ReceivedFile:
    filename: str
    content_type: str | None
    temp_path: Path
    size: int = 0
    sha256: str = ""


@dataclass
class ReceivedForm:
    fields: dict[str, str] = field(default_factory=dict)
    file: ReceivedFile | None = None
    oversized_bytes: int | None = None  # set when the file passed the limit

    def discard(self) -> None:
        if self.file is not None:
            self.file.temp_path.unlink(missing_ok=True)


def _clean_filename(raw: str) -> str:
    # Browsers and httpx escape quotes and newlines in filename="…" as %22 / %0A / %0D.
    for escaped, char in (("%22", '"'), ("%0A", "\n"), ("%0D", "\r")):
        raw = raw.replace(escaped, char).replace(escaped.lower(), char)
    # Keep only the last path component ("C:\\x\\a.txt", "../a.txt" → "a.txt").
    name = PurePosixPath(raw.replace("\\", "/")).name
    return "".join(ch for ch in name if ch >= " " and ch != "\x7f")


class _Part:
    def __init__(self) -> None:
        self.headers: dict[str, bytes] = {}
        self.name: str | None = None
        self.filename: str | None = None
        self.content_type: str | None = None
        self.value = bytearray()

    def finish_headers(self) -> None:
        # Raw bytes: parse_options_header would re-encode a str as latin-1, mangling UTF-8.
        _, options = parse_options_header(self.headers.get("content-disposition", b""))
        params = {k.decode("latin-1").lower(): v for k, v in options.items()}
        if "name" in params:
            self.name = params["name"].decode("utf-8", errors="replace")
        if "filename*" in params:  # RFC 5987: utf-8''percent-encoded
            value = params["filename*"].decode("latin-1")
            self.filename = unquote(value.split("''", 1)[-1])
        elif "filename" in params:
            self.filename = params["filename"].decode("utf-8", errors="replace")
        self.content_type = self.headers.get("content-type", b"").decode("latin-1") or None


MAX_PART_HEADER_BYTES = 8 * 1024


def _check_header(field: bytearray, value: bytearray) -> None:
    """A part header without end must not grow memory (the parser streams it to us)."""
    if len(field) + len(value) > MAX_PART_HEADER_BYTES:
        raise InvalidRequest(
            f"A multipart part header is longer than {MAX_PART_HEADER_BYTES} bytes."
        )


async def receive_form(request: Request, upload_dir: Path, max_file_bytes: int) -> ReceivedForm:
    """Read the whole multipart body; the `file` part lands in a temp file in upload_dir.

    The caller owns the result: move `file.temp_path` into place or call `discard()`.
    """
    content_type = request.headers.get("content-type", "")
    mime, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise InvalidRequest(
            "Invalid Content-Type header: expected multipart/form-data with a boundary, "
            f"got {content_type or '(none)'!r}."
        )
    upload_dir.mkdir(parents=True, exist_ok=True)
    form = ReceivedForm()
    events: list[tuple[str, Any]] = []
    header_field = bytearray()
    header_value = bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])
        _check_header(header_field, header_value)

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])
        _check_header(header_field, header_value)

    def on_header_end() -> None:
        events.append(("header", (bytes(header_field), bytes(header_value))))
        header_field.clear()
        header_value.clear()

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": lambda: events.append(("begin", None)),
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": lambda: events.append(("headers", None)),
            "on_part_data": lambda d, s, e: events.append(("data", d[s:e])),
            "on_part_end": lambda: events.append(("end", None)),
        },
    )
    part: _Part | None = None
    parts = 0
    handle: IO[bytes] | None = None
    digest = hashlib.sha256()
    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            try:
                parser.write(chunk)
            except Exception as exc:
                raise InvalidRequest(f"Malformed multipart/form-data body: {exc}.") from exc
            pending = bytearray()  # file bytes of this network chunk, written in one go
            for kind, value in events:
                if kind == "begin":
                    parts += 1
                    if parts > MAX_PARTS:
                        raise InvalidRequest(f"Too many form fields (at most {MAX_PARTS}).")
                    part = _Part()
                elif kind == "header" and part is not None:
                    name, raw = value
                    part.headers[name.decode("latin-1").lower()] = raw
                elif kind == "headers" and part is not None:
                    part.finish_headers()
                    if part.name is None:
                        raise InvalidRequest("A multipart form part has no field name.")
                    if part.name == FILE_FIELD:
                        if form.file is not None:
                            raise InvalidRequest(
                                "Only one file can be uploaded per request.", param="file"
                            )
                        filename = _clean_filename(part.filename or "")
                        if len(filename) > MAX_FILENAME_LENGTH:
                            raise InvalidRequest(
                                f"Invalid 'file': filename too long (at most "
                                f"{MAX_FILENAME_LENGTH} characters).",
                                param="file",
                            )
                        temp = upload_dir / f".upload-{secrets.token_hex(12)}.part"
                        form.file = ReceivedFile(filename or "upload", part.content_type, temp)
                        handle = await asyncio.to_thread(temp.open, "wb")
                    elif part.filename is not None:
                        raise InvalidRequest(
                            f"Unrecognized request argument supplied: {part.name}",
                            param=part.name,
                            code="unknown_parameter",
                        )
                elif kind == "data" and part is not None:
                    if part.name == FILE_FIELD and form.file is not None:
                        if form.oversized_bytes is not None:
                            form.oversized_bytes += len(value)
                            continue
                        form.file.size += len(value)
                        if form.file.size > max_file_bytes:
                            form.oversized_bytes = form.file.size
                            pending.clear()
                            if handle is not None:
                                await asyncio.to_thread(handle.close)
                                handle = None
                            form.file.temp_path.unlink(missing_ok=True)
                            continue
                        digest.update(value)
                        pending.extend(value)
                    else:
                        part.value.extend(value)
                        if len(part.value) > MAX_FIELD_BYTES:
                            raise InvalidRequest(
                                f"Form field '{part.name}' is too long.", param=part.name
                            )
                elif kind == "end" and part is not None:
                    if part.name != FILE_FIELD and part.name is not None:
                        if part.name in form.fields:
                            raise InvalidRequest(
                                f"Duplicate form field '{part.name}'.", param=part.name
                            )
                        form.fields[part.name] = part.value.decode("utf-8", errors="replace")
                    part = None
            events.clear()
            if pending and handle is not None:
                await asyncio.to_thread(handle.write, bytes(pending))
        parser.finalize()
        if handle is not None:
            await asyncio.to_thread(handle.close)
            handle = None
        if form.file is not None:
            form.file.sha256 = digest.hexdigest()
        return form
    except BaseException:
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()
        form.discard()
        raise
