"""Text extraction for the file types file_search accepts.

`extract_text` is synchronous and CPU/IO bound: call it via `asyncio.to_thread`.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
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


def _extension(filename: str, mime_type: str | None) -> str | None:
    suffix = Path(filename).suffix.lower()
    if suffix in SUPPORTED_EXTENSIONS:
        return suffix
    if not suffix and mime_type:
        return _MIME_TO_EXTENSION.get(mime_type.split(";")[0].strip().lower())
    return None


def is_supported(filename: str, mime_type: str | None = None) -> bool:
    return _extension(filename, mime_type) is not None


def extract_text(path: Path, filename: str, mime_type: str | None = None) -> str:
    """Return the document's text. Raises UnsupportedFileError for unknown types and
    InvalidFileError for corrupt files or files without extractable text."""
    ext = _extension(filename, mime_type)
    if ext is None:
        shown = Path(filename).suffix or mime_type or "(none)"
        raise UnsupportedFileError(
            f"Files with extension [{shown}] are not supported for retrieval. Supported "
            f"extensions: {', '.join(sorted(SUPPORTED_EXTENSIONS))}."
        )
    parser = _PARSERS.get(ext, _parse_plain)
    try:
        text = parser(path)
    except ParsingError:
        raise
    except Exception as exc:  # parser libraries raise a zoo of types on corrupt input
        # Library messages can embed server paths: keep them out of client-facing text.
        logger.debug("parsing %s failed", filename, exc_info=True)
        raise InvalidFileError(
            f"Could not parse {filename!r}: the file is corrupt or not a valid {ext} file."
        ) from exc
    text = _normalise(text)
    if not text:
        raise InvalidFileError(f"File {filename!r} contains no extractable text.")
    return text


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


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


def _parse_plain(path: Path) -> str:
    return _decode(path.read_bytes())


def _parse_json(path: Path) -> str:
    raw = _decode(path.read_bytes())
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidFileError(f"Invalid JSON: {exc}.") from exc
    # Re-dump so \uXXXX escapes become real characters the lexical index can match.
    return json.dumps(value, indent=2, ensure_ascii=False)


def _parse_html(path: Path) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_decode(path.read_bytes()), "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "svg"]):
        tag.decompose()
    return soup.get_text(separator="\n")


def _parse_pdf(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path, strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise InvalidFileError("PDF is password-protected.")
        pages = [page.extract_text() or "" for page in reader.pages]
    except PdfReadError as exc:
        raise InvalidFileError(f"Corrupt PDF: {exc}.") from exc
    if not any(p.strip() for p in pages):
        raise InvalidFileError(
            "PDF has no extractable text (scanned images need OCR, which is not supported)."
        )
    return "\n\n".join(p.strip() for p in pages if p.strip())


def _parse_docx(path: Path) -> str:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError) as exc:
        raise InvalidFileError("File is corrupt or not a DOCX (Office Open XML) document.") from exc
    return "\n".join(_docx_blocks(document.iter_inner_content()))


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


def _parse_pptx(path: Path) -> str:
    from pptx import Presentation
    from pptx.exc import PackageNotFoundError

    try:
        presentation = Presentation(str(path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError) as exc:
        raise InvalidFileError("File is corrupt or not a PPTX (Office Open XML) document.") from exc
    parts: list[str] = []
    for number, slide in enumerate(presentation.slides, start=1):
        lines = [t for shape in slide.shapes for t in _pptx_shape(shape)]
        if slide.has_notes_slide:
            notes = slide.notes_slide.notes_text_frame
            if notes is not None and notes.text.strip():
                lines.append(f"Notes: {notes.text}")
        if any(line.strip() for line in lines):
            parts.append(f"Slide {number}:\n" + "\n".join(lines))
    return "\n\n".join(parts)


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


_PARSERS: dict[str, Callable[[Path], str]] = {
    ".json": _parse_json,
    ".html": _parse_html,
    ".htm": _parse_html,
    ".pdf": _parse_pdf,
    ".docx": _parse_docx,
    ".pptx": _parse_pptx,
}
