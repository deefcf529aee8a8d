"""Text extraction for the file types file_search accepts.

`iter_text` yields a document's text in pieces, in bounded memory where the format allows
(plain text is decoded a block at a time, PDFs a page at a time; docx, pptx, html and json
are parsed whole, after size checks), under `Limits`: a cap on the text one file may yield,
a cap on what a zip-based document (docx, pptx) may unpack to (a zip bomb fails before
anything is inflated), and a deadline checked between pieces. `extract_text` joins the
pieces. Both are synchronous and CPU/IO bound: run them in a thread.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Extensions OpenAI documents for file_search, minus ".doc": legacy binary Word needs a
# converter (antiword/LibreOffice) that no installed package provides.
OPENAI_FILE_SEARCH_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".c", ".cpp", ".cs", ".css", ".docx", ".go", ".html", ".java", ".js", ".json",
        ".md", ".pdf", ".php", ".pptx", ".py", ".rb", ".sh", ".tex", ".ts", ".txt",
    }
)  # fmt: skip

# Plain-text formats we accept beyond OpenAI's list: they need no special parser.
_EXTRA_TEXT_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".markdown", ".htm", ".rs", ".h", ".hpp", ".cc", ".cxx", ".jsx", ".tsx", ".mjs",
        ".cjs", ".kt", ".swift", ".scala", ".lua", ".pl", ".r", ".sql", ".bash", ".zsh",
        ".yaml", ".yml", ".toml", ".ini", ".cfg", ".csv", ".tsv", ".log", ".rst", ".xml",
    }
)  # fmt: skip

SUPPORTED_EXTENSIONS: frozenset[str] = OPENAI_FILE_SEARCH_EXTENSIONS | _EXTRA_TEXT_EXTENSIONS

# Used only when the filename has no usable extension.
_MIME_TO_EXTENSION: dict[str, str] = {
    "text/plain": ".txt",
    "text/markdown": ".md",
    "text/html": ".html",
    "application/json": ".json",
    "application/pdf": ".pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ".pptx",
    "text/x-c": ".c",
    "text/x-c++": ".cpp",
    "text/x-csharp": ".cs",
    "text/css": ".css",
    "text/x-golang": ".go",
    "text/x-java": ".java",
    "text/javascript": ".js",
    "application/typescript": ".ts",
    "text/x-php": ".php",
    "text/x-python": ".py",
    "text/x-script.python": ".py",
    "text/x-ruby": ".rb",
    "application/x-sh": ".sh",
    "text/x-tex": ".tex",
}


class ParsingError(Exception):
    """Base class; `str(err)` is safe to show to API clients."""


class UnsupportedFileError(ParsingError):
    pass


class InvalidFileError(ParsingError):
    pass


class ParseTimeout(InvalidFileError):
    pass


BLOCK_BYTES = 1 << 20  # plain text is read and decoded this much at a time
ZIP_BOMB_RATIO = 100  # a zip member this many times its compressed size ...
ZIP_BOMB_MIN_BYTES = 10 << 20  # ... and at least this large is refused


@dataclass
class Limits:
    max_chars: int | None = None  # text one file may yield
    max_unzipped_bytes: int | None = None  # what a docx/pptx may unpack to
    deadline: float | None = None  # time.monotonic() after which parsing stops

    def check_time(self, filename: str) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise ParseTimeout(f"Parsing {filename!r} took too long; gave up.")


def _extension(filename: str, mime_type: str | None) -> str | None:
    suffix = Path(filename).suffix.lower()
    if suffix in SUPPORTED_EXTENSIONS:
        return suffix
    if not suffix and mime_type:
        return _MIME_TO_EXTENSION.get(mime_type.split(";")[0].strip().lower())
    return None


def is_supported(filename: str, mime_type: str | None = None) -> bool:
    return _extension(filename, mime_type) is not None


def extract_text(
    path: Path, filename: str, mime_type: str | None = None, limits: Limits | None = None
) -> str:
    """Return the document's text. Raises UnsupportedFileError for unknown types and
    InvalidFileError for corrupt files or files without extractable text."""
    return "".join(iter_text(path, filename, mime_type, limits))


def iter_text(
    path: Path, filename: str, mime_type: str | None = None, limits: Limits | None = None
) -> Iterator[str]:
    """The document's normalised text, in pieces (see the module docstring); the same
    errors as `extract_text`, raised when reached."""
    limits = limits or Limits()
    ext = _extension(filename, mime_type)
    if ext is None:
        shown = Path(filename).suffix or mime_type or "(none)"
        raise UnsupportedFileError(
            f"Files with extension [{shown}] are not supported for retrieval. Supported "
            f"extensions: {', '.join(sorted(SUPPORTED_EXTENSIONS))}."
        )
    parser = _PARSERS.get(ext, _parse_plain)
    normaliser = _Normaliser()
    produced = 0
    try:
        for raw in parser(path, limits):
            limits.check_time(filename)
            piece = normaliser.feed(raw)
            if piece:
                produced += len(piece)
                if limits.max_chars is not None and produced > limits.max_chars:
                    raise InvalidFileError(
                        f"File {filename!r} holds more than {limits.max_chars:,} characters "
                        "of text, the most one file may have for file_search."
                    )
                yield piece
    except ParsingError:
        raise
    except Exception as exc:  # parser libraries raise a zoo of types on corrupt input
        # Library messages can embed server paths: keep them out of client-facing text.
        logger.debug("parsing %s failed", filename, exc_info=True)
        raise InvalidFileError(
            f"Could not parse {filename!r}: the file is corrupt or not a valid {ext} file."
        ) from exc
    if not produced:
        raise InvalidFileError(f"File {filename!r} contains no extractable text.")


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


class _Normaliser:
    """`_normalise` over text arriving in pieces: each piece is cut after its last
    non-space character and the whitespace after it is carried into the next, so line
    endings and blank-line runs that straddle pieces come out as from the whole text (and
    the text's trailing whitespace is never emitted)."""

    def __init__(self) -> None:
        self.carry = ""
        self.started = False

    def feed(self, text: str) -> str:
        text = self.carry + text.replace("\x00", "")
        cut = len(text.rstrip())
        body, self.carry = text[:cut], text[cut:]
        if len(self.carry) > BLOCK_BYTES:  # a run of blank lines: keep its normal form
            self.carry = _normalise_space(self.carry)[-BLOCK_BYTES:]
        if not body:
            return ""
        if "\r" in body:
            body = body.replace("\r\n", "\n").replace("\r", "\n")
        body = _fold_blank_lines(_strip_line_ends(body))
        if not self.started:
            body = body.lstrip()
            self.started = bool(body)
        return body


def _strip_line_ends(text: str) -> str:
    """`re.sub(r"[ \t]+\n", "\n", text)`, ten times faster on a long text: a regex tries
    a match at every space."""
    if " \n" not in text and "\t\n" not in text:
        return text
    lines = text.split("\n")
    last = lines.pop()  # (not followed by a newline)
    lines = [line.rstrip(" \t") for line in lines]
    lines.append(last)
    return "\n".join(lines)


def _fold_blank_lines(text: str) -> str:
    """`re.sub(r"\n{3,}", "\n\n", text)`, a few times faster (each pass takes a run of k
    newlines to k - k // 3, never under two)."""
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text


def _normalise_space(space: str) -> str:
    space = space.replace("\r\n", "\n").replace("\r", "\n")
    space = re.sub(r"[ \t]+\n", "\n", space)
    return re.sub(r"\n{3,}", "\n\n", space)


def _decode(data: bytes) -> str:
    # OpenAI accepts UTF-8, UTF-16 and ASCII text; the BOM tells UTF-16/32 apart.
    for bom, encoding in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as exc:
                raise InvalidFileError(f"Text is not valid {encoding}: {exc.reason}.") from exc
    if b"\x00" in data[:8192]:
        raise InvalidFileError("File looks binary (NUL bytes) rather than text.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidFileError(
            "Text files must be encoded as UTF-8, UTF-16 or ASCII "
            f"(invalid byte at offset {exc.start})."
        ) from exc


def _parse_plain(path: Path, limits: Limits) -> Iterator[str]:
    """Decoded a block at a time (the encoding from the BOM, else UTF-8)."""
    with path.open("rb") as f:
        head = f.read(BLOCK_BYTES)
        encoding = "utf-8"
        for bom, name in (
            (codecs.BOM_UTF32_LE, "utf-32"),
            (codecs.BOM_UTF32_BE, "utf-32"),
            (codecs.BOM_UTF8, "utf-8-sig"),
            (codecs.BOM_UTF16_LE, "utf-16"),
            (codecs.BOM_UTF16_BE, "utf-16"),
        ):
            if head.startswith(bom):
                encoding = name
                break
        else:
            if b"\x00" in head[:8192]:
                raise InvalidFileError("File looks binary (NUL bytes) rather than text.")
        decoder = codecs.getincrementaldecoder(encoding)("strict")
        consumed = 0
        block = head
        while True:
            final = len(block) < BLOCK_BYTES
            try:
                yield decoder.decode(block, final=final)
            except UnicodeDecodeError as exc:
                if encoding.startswith("utf-8"):
                    raise InvalidFileError(
                        "Text files must be encoded as UTF-8, UTF-16 or ASCII "
                        f"(invalid byte at offset {consumed + exc.start})."
                    ) from exc
                raise InvalidFileError(f"Text is not valid {encoding}: {exc.reason}.") from exc
            if final:
                return
            consumed += len(block)
            block = f.read(BLOCK_BYTES)


def _read_whole(path: Path, limits: Limits) -> str:
    """For formats parsed whole (json, html): refuse files whose text cannot fit the cap."""
    if limits.max_chars is not None and path.stat().st_size > 4 * limits.max_chars:
        raise InvalidFileError(
            f"File is too large to parse (more than {4 * limits.max_chars:,} bytes)."
        )
    return _decode(path.read_bytes())


def _parse_json(path: Path, limits: Limits) -> Iterator[str]:
    raw = _read_whole(path, limits)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidFileError(f"Invalid JSON: {exc}.") from exc
    # Re-dump so \uXXXX escapes become real characters the lexical index can match.
    yield json.dumps(value, indent=2, ensure_ascii=False)


def _parse_html(path: Path, limits: Limits) -> Iterator[str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_read_whole(path, limits), "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "svg"]):
        tag.decompose()
    yield soup.get_text(separator="\n")


def _parse_pdf(path: Path, limits: Limits) -> Iterator[str]:
    """A page at a time; pages are separated by a blank line."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    found = False
    try:
        reader = PdfReader(path, strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise InvalidFileError("PDF is password-protected.")
        for page in reader.pages:
            limits.check_time(path.name)
            text = (page.extract_text() or "").strip()
            if text:
                yield ("\n\n" if found else "") + text
                found = True
    except PdfReadError as exc:
        raise InvalidFileError(f"Corrupt PDF: {exc}.") from exc
    if not found:
        raise InvalidFileError(
            "PDF has no extractable text (scanned images need OCR, which is not supported)."
        )


def _check_zip(path: Path, limits: Limits, kind: str) -> None:
    """Refuse a zip-based document that would unpack to too much, or whose members are
    compressed implausibly well (a zip bomb), before any member is inflated. zipfile never
    inflates a member beyond its declared size (it fails the CRC check instead), so the
    declared sizes bound what parsing can take."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile as exc:
        raise InvalidFileError(
            f"File is corrupt or not a {kind} (Office Open XML) document."
        ) from exc
    total = 0
    for member in members:
        total += member.file_size
        if member.file_size >= ZIP_BOMB_MIN_BYTES and member.file_size > ZIP_BOMB_RATIO * max(
            member.compress_size, 1
        ):
            raise InvalidFileError(
                f"The {kind} document is a zip bomb: a member expands {member.file_size:,} "
                f"bytes from {member.compress_size:,}; not processed."
            )
    if limits.max_unzipped_bytes is not None and total > limits.max_unzipped_bytes:
        raise InvalidFileError(
            f"The {kind} document unpacks to {total:,} bytes, more than the "
            f"{limits.max_unzipped_bytes:,} allowed; not processed."
        )


def _parse_docx(path: Path, limits: Limits) -> Iterator[str]:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    _check_zip(path, limits, "DOCX")
    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError) as exc:
        raise InvalidFileError("File is corrupt or not a DOCX (Office Open XML) document.") from exc
    limits.check_time(path.name)
    for block in _docx_blocks(document.iter_inner_content()):
        yield block + "\n"


def _docx_blocks(blocks: Iterable[Any]) -> Iterator[str]:
    from docx.table import Table

    for block in blocks:
        if isinstance(block, Table):
            yield from _docx_table(block)
        else:
            yield block.text


def _docx_table(table: Any) -> Iterator[str]:
    for row in table.rows:
        cells: list[str] = []
        for cell in row.cells:
            # Merged cells come back once per grid column: keep one copy.
            text = "\n".join(_docx_blocks(cell.iter_inner_content())).strip()
            if not cells or cells[-1] != text:
                cells.append(text)
        yield " | ".join(cells)
    yield ""


def _parse_pptx(path: Path, limits: Limits) -> Iterator[str]:
    from pptx import Presentation
    from pptx.exc import PackageNotFoundError

    _check_zip(path, limits, "PPTX")
    try:
        presentation = Presentation(str(path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError) as exc:
        raise InvalidFileError("File is corrupt or not a PPTX (Office Open XML) document.") from exc
    first = True
    for number, slide in enumerate(presentation.slides, start=1):
        limits.check_time(path.name)
        lines = [t for shape in slide.shapes for t in _pptx_shape(shape)]
        if slide.has_notes_slide:
            notes = slide.notes_slide.notes_text_frame
            if notes is not None and notes.text.strip():
                lines.append(f"Notes: {notes.text}")
        if any(line.strip() for line in lines):
            yield ("" if first else "\n\n") + f"Slide {number}:\n" + "\n".join(lines)
            first = False


def _pptx_shape(shape: Any) -> Iterator[str]:
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
        for child in shape.shapes:
            yield from _pptx_shape(child)
        return
    if getattr(shape, "has_table", False) and shape.has_table:
        for row in shape.table.rows:
            yield " | ".join(cell.text for cell in row.cells)
        return
    if shape.has_text_frame and shape.text_frame.text.strip():
        yield shape.text_frame.text


_PARSERS: dict[str, Callable[[Path, Limits], Iterator[str]]] = {
    ".json": _parse_json,
    ".html": _parse_html,
    ".htm": _parse_html,
    ".pdf": _parse_pdf,
    ".docx": _parse_docx,
    ".pptx": _parse_pptx,
}
