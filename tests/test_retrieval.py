"""Retrieval layer: parsing, chunking, both index backends (Qdrant Edge, qdrant-client), BM25,
embeddings."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import qdrant_edge as qe

from app.retrieval import chunking, edge_index, lexical, parsing
from app.retrieval.chunking import (
    Chunk,
    ChunkingConfig,
    _load_shipped_encoding,
    chunk_stream,
    chunk_text,
    get_encoding,
    resolve_chunking_strategy,
    validate_chunking,
)
from app.retrieval.edge_index import (
    EdgeIndex,
    IndexLocked,
    release_resident_pages,
    to_edge_filter,
)
from app.retrieval.embeddings import Embedder, EmbeddingError, _vectors, drain_litellm_logging
from app.retrieval.filters import build_filter
from app.retrieval.index import RRF_K, ScoredChunk, make_plan, point_id, rrf
from app.retrieval.page_pool import PAGE_CHUNKS, FileToChunk, PagePool
from app.retrieval.parsing import (
    OPENAI_FILE_SEARCH_EXTENSIONS,
    InvalidFileError,
    Limits,
    ParseTimeout,
    UnsupportedFileError,
    extract_text,
    is_supported,
    iter_text,
)
from app.retrieval.qdrant_index import QdrantIndex
from tests.fake_upstream import FakeUpstream, fake_embedding

DIM = 64


# -- document builders ----------------------------------------------------------------


def _pdf(lines: list[str]) -> bytes:
    """A minimal valid one-page PDF drawing `lines` in Helvetica, built by hand."""
    escaped = [line.replace("(", "\\(").replace(")", "\\)") for line in lines]
    ops = [f"({line}) Tj 0 -16 Td" for line in escaped]
    content = f"BT /F1 12 Tf 72 720 Td {' '.join(ops)} ET" if lines else ""
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        "/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\n".encode()
    out += f"startxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _docx(path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("Quarterly report", level=1)
    document.add_paragraph("The docx body mentions a periwinkle zeppelin.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "Region"
    table.cell(0, 1).text = "Mascot"
    table.cell(1, 0).text = "North"
    table.cell(1, 1).text = "tangerine walrus"
    document.save(str(path))


def _pptx(path: Path) -> None:
    from pptx import Presentation
    from pptx.util import Inches

    presentation = Presentation()
    slide = presentation.slides.add_slide(presentation.slide_layouts[5])
    slide.shapes.title.text = "Roadmap"
    rows = slide.shapes.add_table(2, 2, Inches(1), Inches(2), Inches(6), Inches(1)).table
    rows.cell(0, 0).text = "Phase"
    rows.cell(1, 0).text = "obsidian lighthouse"
    slide.notes_slide.notes_text_frame.text = "Speaker notes about a velvet hurricane."
    presentation.save(str(path))


DOCUMENTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "report.pdf": (
        lambda p: p.write_bytes(_pdf(["Annual summary", "The marzipan glacier moved north."])),
        "marzipan glacier",
    ),
    "memo.docx": (_docx, "tangerine walrus"),
    "deck.pptx": (_pptx, "obsidian lighthouse"),
    "page.html": (
        lambda p: p.write_text(
            "<html><head><title>T</title><style>.x{color:red} cobalt</style>"
            "<script>var decoy = 'cobalt kangaroo';</script></head>"
            "<body><h1>Hello</h1><p>A <b>saffron</b> kangaroo appears.</p></body></html>",
            encoding="utf-8",
        ),
        "saffron kangaroo",
    ),
    "data.json": (
        # \u00e9 escapes must come out as real characters the lexical index can match.
        lambda p: p.write_text('{"animal": "caf\\u00e9 platypus", "n": [1, 2]}', "utf-8"),
        "café platypus",
    ),
    "notes.md": (
        lambda p: p.write_text("# Notes\n\n- the *crimson* armadillo sleeps\n", "utf-8"),
        "crimson armadillo",
    ),
    "tool.py": (
        lambda p: p.write_text("def vermilion_badger():\n    return 'ok'\n", "utf-8"),
        "vermilion_badger",
    ),
    "utf16.txt": (
        lambda p: p.write_text("An emerald pelican in UTF-16.", encoding="utf-16"),
        "emerald pelican",
    ),
}


# -- parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize("filename", sorted(DOCUMENTS))
def test_extract_text_each_type(tmp_path: Path, filename: str) -> None:
    build, phrase = DOCUMENTS[filename]
    path = tmp_path / filename
    build(path)
    text = extract_text(path, filename, None)
    normalised = " ".join(text.replace("*", "").split())
    assert phrase in normalised, text


def test_html_drops_scripts_and_styles(tmp_path: Path) -> None:
    build, _ = DOCUMENTS["page.html"]
    build(tmp_path / "page.html")
    text = extract_text(tmp_path / "page.html", "page.html", "text/html")
    assert "decoy" not in text and "color:red" not in text and "cobalt" not in text


def test_docx_table_and_pptx_notes(tmp_path: Path) -> None:
    _docx(tmp_path / "a.docx")
    assert "North | tangerine walrus" in extract_text(tmp_path / "a.docx", "a.docx", None)
    _pptx(tmp_path / "b.pptx")
    deck = extract_text(tmp_path / "b.pptx", "b.pptx", None)
    assert deck.startswith("Slide 1:") and "velvet hurricane" in deck


@pytest.mark.parametrize(
    ("filename", "content", "reason"),  # reason None: any message
    [
        ("broken.pdf", b"%PDF-1.4\nthis is not a pdf at all", None),
        ("blank.pdf", _pdf([]), "no extractable text"),
        ("broken.docx", b"PK\x03\x04 not really a zip", "corrupt or not a DOCX"),
        ("broken.pptx", b"definitely not a presentation", "corrupt or not a PPTX"),
        ("broken.json", b'{"a": ', "Invalid JSON"),
        ("empty.txt", b"", "no extractable text"),
        ("blank.md", b"  \n\n\t ", "no extractable text"),
        ("binary.txt", b"\x00\x01\x02\x03binary", "binary"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), "UTF-8"),
        ("empty.html", b"<html><script>only()</script></html>", "no extractable text"),
    ],
)
def test_invalid_files(tmp_path: Path, filename: str, content: bytes, reason: str | None) -> None:
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(InvalidFileError, match=reason):
        extract_text(path, filename, None)


def test_truncated_and_tampered_office_files(tmp_path: Path) -> None:
    import zipfile

    _docx(tmp_path / "ok.docx")
    data = (tmp_path / "ok.docx").read_bytes()
    (tmp_path / "cut.docx").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidFileError):
        extract_text(tmp_path / "cut.docx", "cut.docx", None)
    # A well-formed zip whose main part is not XML: the generic fallback must catch it
    # and not leak library messages with server paths.
    with (
        zipfile.ZipFile(tmp_path / "ok.docx") as src,
        zipfile.ZipFile(tmp_path / "bad.docx", "w") as dst,
    ):
        for item in src.infolist():
            body = b"<w:document" if item.filename == "word/document.xml" else src.read(item)
            dst.writestr(item, body)
    with pytest.raises(InvalidFileError, match="corrupt") as info:
        extract_text(tmp_path / "bad.docx", "bad.docx", None)
    assert str(tmp_path) not in str(info.value)


def test_unsupported_and_supported_types(tmp_path: Path) -> None:
    path = tmp_path / "x.exe"
    path.write_bytes(b"MZ")
    with pytest.raises(UnsupportedFileError, match=r"\.exe"):
        extract_text(path, "x.exe", "application/octet-stream")
    assert not is_supported("sheet.xlsx") and not is_supported("old.doc")
    assert all(is_supported(f"f{ext}") for ext in OPENAI_FILE_SEARCH_EXTENSIONS)
    assert is_supported("MAIN.RS") and is_supported("Component.tsx")
    # No extension: fall back to the declared MIME type.
    assert is_supported("README", "text/markdown") and not is_supported("README")
    (tmp_path / "README").write_text("mime fallback works", "utf-8")
    assert extract_text(tmp_path / "README", "README", "text/plain") == "mime fallback works"


# -- chunking ---------------------------------------------------------------------------


def test_encoding_loads_offline_and_is_o200k() -> None:
    # litellm's wheel ships the BPE file; no download is needed (or possible here).
    shipped = _load_shipped_encoding()
    assert shipped is not None and shipped.encode("hello world") == [24912, 2375]
    encoding = get_encoding()
    assert encoding.name == "o200k_base"
    assert encoding.encode("hello world") == [24912, 2375]  # reference o200k ids
    assert get_encoding() is encoding


@pytest.mark.parametrize(
    ("size", "overlap", "message"),
    [
        (99, 0, "Expected a value >= 100, but got 99"),
        (4097, 0, "Expected a value <= 4096, but got 4097"),
        (800, 401, "must not exceed half of max_chunk_size_tokens"),
        (800, -1, "Expected a value >= 0"),
    ],
)
def test_chunking_bounds(size: int, overlap: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_chunking(size, overlap)
    with pytest.raises(ValueError, match=message):
        chunk_text("some text", size, overlap)


def test_chunking_bounds_accepted_edges() -> None:
    validate_chunking(100, 50)
    validate_chunking(4096, 2048)
    validate_chunking(100, 0)


def test_resolve_chunking_strategy() -> None:
    assert resolve_chunking_strategy(None) == ChunkingConfig(800, 400)
    assert resolve_chunking_strategy({"type": "auto"}) == ChunkingConfig(800, 400)
    static = {"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 0}}
    assert resolve_chunking_strategy(static) == ChunkingConfig(200, 0)
    with pytest.raises(ValueError, match=r"static\.max_chunk_size_tokens"):
        resolve_chunking_strategy({"type": "static", "static": {"chunk_overlap_tokens": 0}})
    with pytest.raises(ValueError, match=r"chunking_strategy\.type"):
        resolve_chunking_strategy({"type": "semantic"})


def test_chunk_windows_and_overlap() -> None:
    encoding = get_encoding()
    text = " ".join(f"word{i}" for i in range(3000))
    chunks = chunk_text(text, max_chunk_size_tokens=200, chunk_overlap_tokens=50)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.token_count <= 200 for c in chunks)
    assert all(c.token_count == 200 for c in chunks[:-1])
    for previous, current in pairwise(chunks):
        tail = encoding.encode(previous.text)[-50:]
        assert encoding.encode(current.text)[:50] == tail
    assert chunks[0].text.startswith("word0") and chunks[-1].text.endswith("word2999")
    # Special-token text in a document is plain text, not an error.
    assert chunk_text("a <|endoftext|> b", 100, 0)[0].text == "a <|endoftext|> b"
    assert chunk_text("   \n ", 100, 0) == []


def test_chunking_never_splits_characters() -> None:
    text = "🙂日本語の文章です。" * 400
    chunks = chunk_text(text, max_chunk_size_tokens=100, chunk_overlap_tokens=30)
    assert len(chunks) > 5
    assert all("\ufffd" not in c.text and c.token_count <= 100 for c in chunks)
    no_overlap = chunk_text(text, max_chunk_size_tokens=100, chunk_overlap_tokens=0)
    assert "".join(c.text for c in no_overlap) == text


# -- vector index -----------------------------------------------------------------------
# Every case runs on both backends: Qdrant Edge (the embedded default) and qdrant-client
# (the Qdrant-server backend; here in qdrant-client's local mode, which has the server's
# request API but not its engine: no Qdrant server runs in these tests).

BACKENDS = ["edge", "qdrant-client-local"]


def embed(text: str) -> list[float]:
    """Deterministic hashed bag-of-words embedding, unit length."""
    vector = [0.0] * DIM
    for term in re.findall(r"\w+", text.lower()):
        slot = int.from_bytes(hashlib.sha256(term.encode()).digest()[:4], "big") % DIM
        vector[slot] += 1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def _open(backend: str, path: Path, dense_dim: int | None = DIM) -> Any:
    if backend == "edge":
        return EdgeIndex(path / "edge", dense_dim=dense_dim)
    return QdrantIndex(path=path / "qdrant", dense_dim=dense_dim)


@pytest.fixture(params=BACKENDS)
async def index(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    idx = _open(request.param, tmp_path)
    await idx.ensure_collection()
    yield idx
    await idx.close()


async def _add(
    index: Any,
    store: str,
    file_id: str,
    text: str,
    attributes: dict[str, Any] | None = None,
    dense: bool = True,
    filename: str | None = None,
) -> int:
    chunks = chunk_text(text, 100, 0)
    vectors = [embed(c.text) for c in chunks] if dense else None
    return await index.upsert_chunks(
        store, file_id, filename or f"{file_id}.txt", chunks, attributes, vectors
    )


async def test_parsed_documents_are_searchable(index: Any, tmp_path: Path) -> None:
    for number, (filename, (build, _)) in enumerate(sorted(DOCUMENTS.items())):
        path = tmp_path / filename
        build(path)
        text = extract_text(path, filename, None)
        chunks = chunk_text(text, 100, 20)
        await index.upsert_chunks("vs_docs", f"file_{number}", filename, chunks, {"n": number})
    for filename, (_, phrase) in DOCUMENTS.items():
        hits = await index.search(["vs_docs"], phrase, max_num_results=3)
        assert hits, filename
        assert hits[0].filename == filename
        assert hits[0].score == 1.0  # every query term present
        assert 0.0 < hits[0].score <= 1.0 and all(0.0 < h.score <= 1.0 for h in hits)
    # Decoys inside <script> were not indexed.
    assert await index.search(["vs_docs"], "cobalt", max_num_results=3) == []


async def test_tenancy_and_hit_fields(index: Any) -> None:
    await _add(index, "vs_a", "f1", "Lemurs eat tamarind fruit.", {"lang": "en"})
    await _add(index, "vs_b", "f2", "Lemurs of Madagascar.", {"lang": "fr"})
    hits = await index.search(["vs_a"], "lemurs")
    assert [(h.vector_store_id, h.file_id, h.filename) for h in hits] == [("vs_a", "f1", "f1.txt")]
    assert hits[0].attributes == {"lang": "en"} and hits[0].chunk_index == 0
    assert hits[0].text == "Lemurs eat tamarind fruit."
    both = await index.search(["vs_a", "vs_b"], "lemurs")
    assert {h.file_id for h in both} == {"f1", "f2"}
    assert await index.search([], "lemurs") == []
    assert await index.search(["vs_a"], "   ...  ") == []
    assert await index.store_ids() == {"vs_a", "vs_b"}
    assert await index.file_ids("vs_a") == {"f1"}


async def test_attribute_filters(index: Any) -> None:
    docs = [
        ("r1", {"author": "ada", "year": 2021, "draft": False, "region.code": "eu"}),
        ("r2", {"author": "bob", "year": 2023, "draft": True, "region.code": "us"}),
        ("r3", {"author": "cy", "year": 2024.5, "draft": False, "region.code": "eu"}),
        ("r4", {"author": "ada", "year": 2019, "draft": True}),
    ]
    for file_id, attrs in docs:
        await _add(index, "vs_f", file_id, f"Budget forecast document {file_id}.", attrs)

    async def ids(flt: dict[str, Any] | None) -> set[str]:
        hits = await index.search(["vs_f"], "budget forecast", filters=flt)
        return {h.file_id for h in hits}

    assert await ids(None) == {"r1", "r2", "r3", "r4"}
    assert await ids({"type": "eq", "key": "author", "value": "ada"}) == {"r1", "r4"}
    assert await ids({"type": "ne", "key": "author", "value": "ada"}) == {"r2", "r3"}
    assert await ids({"type": "eq", "key": "draft", "value": True}) == {"r2", "r4"}
    assert await ids({"type": "eq", "key": "year", "value": 2023}) == {"r2"}
    assert await ids({"type": "gt", "key": "year", "value": 2021}) == {"r2", "r3"}
    assert await ids({"type": "gte", "key": "year", "value": 2021}) == {"r1", "r2", "r3"}
    assert await ids({"type": "lt", "key": "year", "value": 2021}) == {"r4"}
    assert await ids({"type": "in", "key": "author", "value": ["bob", "cy"]}) == {"r2", "r3"}
    assert await ids({"type": "nin", "key": "author", "value": ["bob", "cy"]}) == {"r1", "r4"}
    assert await ids({"type": "in", "key": "year", "value": [2019, 2024.5]}) == {"r3", "r4"}
    assert await ids({"type": "eq", "key": "region.code", "value": "eu"}) == {"r1", "r3"}
    compound = {
        "type": "or",
        "filters": [
            {
                "type": "and",
                "filters": [
                    {"type": "eq", "key": "author", "value": "ada"},
                    {"type": "gte", "key": "year", "value": 2020},
                ],
            },
            {"type": "eq", "key": "draft", "value": True},
        ],
    }
    assert await ids(compound) == {"r1", "r2", "r4"}
    before_2022 = {"type": "lt", "key": "year", "value": 2022}
    assert await ids({"type": "and", "filters": [compound, before_2022]}) == {"r1", "r4"}


async def test_datetime_range_filter(index: Any) -> None:
    await _add(index, "vs_d", "old", "Meeting minutes.", {"date": "2023-01-05T00:00:00Z"})
    await _add(index, "vs_d", "new", "Meeting minutes.", {"date": "2024-06-01T00:00:00Z"})
    flt = {"type": "gt", "key": "date", "value": "2024-01-01T00:00:00Z"}
    assert [h.file_id for h in await index.search(["vs_d"], "minutes", filters=flt)] == ["new"]


@pytest.mark.parametrize(
    "flt",
    [
        {"type": "regex", "key": "a", "value": "x"},
        {"type": "eq", "key": "a"},
        {"type": "eq", "key": "", "value": "x"},
        {"type": "gt", "key": "a", "value": "not a number"},
        {"type": "in", "key": "a", "value": "scalar"},
        {"type": "in", "key": "a", "value": []},
        {"type": "and", "filters": []},
        {"type": "eq", "key": "a", "value": {"nested": 1}},
    ],
)
def test_invalid_filters(flt: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        build_filter(flt)


async def test_score_threshold(index: Any) -> None:
    await _add(index, "vs_s", "full", "Quantum pineapple harvest report.", dense=False)
    await _add(index, "vs_s", "partial", "Quantum physics lecture notes.", dense=False)
    for i in range(5):  # make "quantum" common so it weighs less than the rare terms
        await _add(index, "vs_other", f"q{i}", f"Quantum entry number {i}.", dense=False)
    hits = await index.search(["vs_s"], "quantum pineapple harvest")
    assert [h.file_id for h in hits] == ["full", "partial"]
    full, partial = hits
    assert full.score == 1.0 and 0.0 < partial.score < 0.5
    strict = await index.search(["vs_s"], "quantum pineapple harvest", score_threshold=0.5)
    assert [h.file_id for h in strict] == ["full"]
    assert await index.search(["vs_s"], "quantum pineapple harvest", score_threshold=1.0) == [full]
    # Terms absent from the collection do not drag scores down.
    assert (await index.search(["vs_s"], "pineapple xyzzyplugh"))[0].score == 1.0
    with pytest.raises(ValueError):
        await index.search(["vs_s"], "quantum", score_threshold=1.5)
    with pytest.raises(ValueError):
        await index.search(["vs_s"], "quantum", max_num_results=0)


async def test_bm25_ranking(index: Any) -> None:
    """Real BM25: stemming and stopwords, term-frequency saturation, length normalisation."""
    await _add(index, "vs_b", "stem", "The elephants were running across the plains.")
    await _add(index, "vs_b", "once", "An elephant. " + "Grass and trees. " * 20)
    await _add(index, "vs_b", "twice", "An elephant and another elephant. " + "Grass. " * 20)
    await _add(index, "vs_b", "stop", "The of and to in is it was.")
    # "running elephant" matches "elephants were running" through the stemmer.
    hits = await index.search(["vs_b"], "running elephant")
    assert hits[0].file_id == "stem" and hits[0].score == 1.0
    # More occurrences and a shorter text rank higher, stopwords match nothing.
    ranked = [h.file_id for h in await index.search(["vs_b"], "elephant")]
    assert ranked.index("twice") < ranked.index("once")  # same length, tf 2 beats tf 1
    assert ranked.index("stem") < ranked.index("once")  # same tf, the shorter text wins
    assert await index.search(["vs_b"], "the of and") == []


async def test_backends_rank_alike(tmp_path: Path) -> None:
    """The same chunks and queries give the same hits and scores on both backends."""
    texts = {
        f"d{i}": f"Document {i} about {topic} and {other}."
        for i, (topic, other) in enumerate(
            [
                ("solar panels", "batteries"),
                ("wind turbines", "solar storage"),
                ("battery chemistry", "lithium mining"),
                ("hydro power", "dams and rivers"),
                ("solar farms", "desert land"),
            ]
        )
    }
    results = []
    for backend in BACKENDS:
        idx = _open(backend, tmp_path / backend)
        await idx.ensure_collection()
        for file_id, text in texts.items():
            await _add(idx, "vs", file_id, text)
        results.append(
            [
                [(h.file_id, h.score) for h in await idx.search(["vs"], q, dense_query=dq)]
                for q in ("solar", "battery storage", "rivers dams power", "lithium")
                for dq in (None, embed(q))
            ]
        )
        await idx.close()
    edge, client = results
    assert [[f for f, _ in hits] for hits in edge] == [[f for f, _ in hits] for hits in client]
    for a, b in zip(edge, client, strict=True):  # f32 in one engine, f64 in the other
        assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-5)


async def test_max_num_results(index: Any) -> None:
    for i in range(12):
        await _add(index, "vs_m", f"m{i}", f"Shared keyword mango {i}.")
    assert len(await index.search(["vs_m"], "mango", max_num_results=5)) == 5
    assert len(await index.search(["vs_m"], "mango", dense_query=embed("mango"))) == 10


async def test_hybrid_rrf(index: Any) -> None:
    await _add(index, "vs_h", "lex", "Tariff schedule for imported bicycles.")
    # Lexically unrelated to the query, but given the query's own embedding.
    await index.upsert_chunks(
        "vs_h", "sem", "sem.txt", [Chunk("Customs duties overview.", 4, 0)], None,
        [embed("tariff bicycles")],
    )  # fmt: skip
    await _add(index, "vs_h", "noise", "Recipe for lemon cake.")
    lexical_only = await index.search(["vs_h"], "tariff bicycles")
    assert [h.file_id for h in lexical_only] == ["lex"]
    hybrid = await index.search(["vs_h"], "tariff bicycles", dense_query=embed("tariff bicycles"))
    assert {"lex", "sem"} <= {h.file_id for h in hybrid}
    assert all(0.0 < h.score <= 1.0 for h in hybrid)
    sem = next(h for h in hybrid if h.file_id == "sem")
    assert sem.score == pytest.approx(1.0, abs=1e-4)  # identical embedding: cosine 1
    assert (sem.text, sem.filename, sem.chunk_index) == ("Customs duties overview.", "sem.txt", 0)
    # Only dense signal (no word characters in the query).
    dense_only = await index.search(["vs_h"], "???", dense_query=embed("tariff bicycles"))
    assert dense_only[0].file_id == "sem"
    # Threshold applies to the fused list too: the cake recipe shares nothing.
    strict = await index.search(
        ["vs_h"], "tariff bicycles", dense_query=embed("tariff bicycles"), score_threshold=0.5
    )
    assert "noise" not in {h.file_id for h in strict}
    with pytest.raises(ValueError, match="dimension"):
        await index.search(["vs_h"], "tariff", dense_query=[1.0, 0.0])


def test_rrf_scores_as_qdrant_and_breaks_ties_by_first_appearance() -> None:
    def ranking(*ids: str) -> list[ScoredChunk]:
        return [ScoredChunk(point, 0.0) for point in ids]

    # Qdrant's own case (its rrf_scoring test): 1 / (k + 0-based position), summed.
    fused = rrf([ranking("2", "1"), ranking("1", "2", "3"), ranking("5", "3", "1")])
    assert [(point_id, round(score, 6)) for point_id, score in fused] == [
        ("1", 1.083333), ("2", 0.833333), ("3", 0.583333), ("5", 0.5),
    ]  # fmt: skip
    # Ties keep first appearance, even where float sums differ in the last bit
    # (1/2 + 1/12 and 1/3 + 1/4: positions 0 and 10 against 1 and 2).
    assert [point_id for point_id, _ in rrf([ranking("a", "b"), ranking("b", "a")])] == ["a", "b"]
    lexical_side = ranking("x", "y", "z", *(f"l{i}" for i in range(20)))
    dense_side = ranking(*(f"d{i}" for i in range(2)), "y", *(f"e{i}" for i in range(7)), "x")
    assert [point_id for point_id, _ in rrf([lexical_side, dense_side])][:3] == ["x", "y", "d0"]
    assert [point_id for point_id, _ in rrf([dense_side, lexical_side])][:3] == ["y", "x", "d0"]


async def test_fusion_here_matches_the_engines_rrf(tmp_path: Path) -> None:
    """Hybrid search fuses in Python; Qdrant Edge's own prefetch + RRF query over the same
    two sources fuses the same points to the same scores."""
    index = EdgeIndex(tmp_path / "edge", dense_dim=DIM)
    try:
        topics = ["solar", "wind", "battery", "river", "desert", "lithium", "storage", "grid"]
        for i in range(40):
            words = " ".join(topics[(i * j) % len(topics)] for j in range(1, 4))
            await _add(index, "vs", f"d{i}", f"Note {i} on {words} power and {topics[i % 8]}.")
        for text in ("solar storage", "river grid power", "lithium battery desert"):
            plan = make_plan(["vs"], text, embed(text), DIM, 10, 0.0, None)
            assert plan is not None and plan.hybrid
            answers = await index.run_queries(plan.queries(), plan.scope)
            ours = rrf(answers[-2:])
            scope = to_edge_filter(plan.scope)
            sources = [
                qe.Prefetch(
                    limit=plan.limit,
                    query=qe.Query.Nearest(
                        qe.SparseVector(q.vector.indices, q.vector.values)
                        if isinstance(q.vector, lexical.Sparse)
                        else q.vector,
                        using=q.using,
                    ),
                    filter=scope,
                )
                for q in plan.queries()[-2:]
            ]
            fused = index._shard.query(
                qe.QueryRequest(
                    limit=1000, prefetches=sources, query=qe.Fusion.Rrf(k=RRF_K), filter=scope
                )
            )
            engine = sorted((round(p.score, 5), str(p.id)) for p in fused)
            assert engine == sorted((round(score, 5), point) for point, score in ours)
            hits = await index.search(["vs"], text, dense_query=embed(text))
            fused_scores = dict(ours)
            ids = [point_id("vs", h.file_id, h.chunk_index) for h in hits]
            scores = [fused_scores[i] for i in ids]
            assert scores == sorted(scores, reverse=True)  # hits in fused order
    finally:
        await index.close()


async def test_delete_and_reindex(index: Any) -> None:
    long_text = " ".join(f"token{i} walnut" for i in range(400))
    assert await _add(index, "vs_x", "doc", long_text) > 1
    await _add(index, "vs_y", "doc", "walnut in another store")
    await _add(index, "vs_x", "keep", "walnut kept here")
    hits = await index.search(["vs_x"], "walnut", max_num_results=50)
    assert {h.file_id for h in hits} == {"doc", "keep"}

    # Re-upserting replaces all previous chunks of the file, even with fewer chunks.
    assert await _add(index, "vs_x", "doc", "short walnut") == 1
    assert await index.count_chunks("vs_x", "doc") == 1
    # Pages after the first add to the file's chunks instead of replacing them.
    more = [Chunk("walnut page two", 3, 1)]
    assert await index.upsert_chunks("vs_x", "doc", "doc.txt", more, None, None, replace=False)
    assert await index.count_chunks("vs_x", "doc") == 2

    await index.delete_file("vs_x", "doc")
    assert {h.file_id for h in await index.search(["vs_x"], "walnut")} == {"keep"}
    assert await index.count_chunks("vs_y", "doc") == 1  # other stores untouched

    await _add(index, "vs_x", "doc", "walnut again")
    await index.delete_file(None, "doc")  # from every store
    assert await index.count_chunks("vs_x", "doc") == 0
    assert await index.count_chunks("vs_y", "doc") == 0

    await index.delete_store("vs_x")
    assert await index.count_chunks("vs_x") == 0
    assert await index.search(["vs_x"], "walnut") == []
    assert await index.store_ids() == {"vs_y"} or await index.count_chunks("vs_y") == 0


@pytest.mark.parametrize("backend", BACKENDS)
async def test_scores_stay_valid_after_deletes(tmp_path: Path, backend: str) -> None:
    """IDF counts forget deleted chunks (qdrant-client local mode needed a workaround,
    issue #1426), also after reopening."""
    index = _open(backend, tmp_path, dense_dim=None)
    await index.ensure_collection()
    for i in range(4):
        await _add(index, "vs", f"f{i}", "identical hazelnut text", dense=False)
    await _add(index, "vs", "other", "unrelated almond text", dense=False)
    for i in range(3):
        await index.delete_file("vs", f"f{i}")
    await index.delete_store("vs_never_existed")
    hits = await index.search(["vs"], "hazelnut")
    assert [(h.file_id, h.score) for h in hits] == [("f3", 1.0)]
    await index.close()
    reopened = _open(backend, tmp_path, dense_dim=None)
    await reopened.ensure_collection()
    assert [(h.file_id, h.score) for h in await reopened.search(["vs"], "hazelnut")] == [
        ("f3", 1.0)
    ]
    await reopened.close()


async def test_update_attributes(index: Any) -> None:
    await _add(index, "vs_u", "f", "Zebra crossing guide.", {"status": "draft", "old": 1})
    await index.update_attributes("vs_u", "f", {"status": "final", "version": 2})
    flt = {"type": "eq", "key": "status", "value": "final"}
    hits = await index.search(["vs_u"], "zebra", filters=flt)
    assert [h.attributes for h in hits] == [{"status": "final", "version": 2}]


async def test_upsert_validation(index: Any) -> None:
    chunks = chunk_text("one chunk", 100, 0)
    with pytest.raises(ValueError, match="dense vectors"):
        await index.upsert_chunks("vs", "f", "f.txt", chunks, None, [])
    with pytest.raises(ValueError, match="dimension"):
        await index.upsert_chunks("vs", "f", "f.txt", chunks, None, [[1.0]])


async def test_edge_shard_is_locked_persistent_and_grows_dense(tmp_path: Path) -> None:
    path = tmp_path / "edge"
    first = EdgeIndex(path)
    await _add(first, "vs", "f", "Persistent narwhal.", dense=False)
    # One process, one opener: a second opener (here or in another process) is refused.
    with pytest.raises(IndexLocked, match="QDRANT_URL"):
        EdgeIndex(path)
    await first.maintain()  # nothing due yet: a no-op
    await first.close()

    reopened = EdgeIndex(path, dense_dim=DIM)  # an embedding model was configured since
    assert [h.file_id for h in await reopened.search(["vs"], "narwhal")] == ["f"]
    await _add(reopened, "vs", "g", "Dense narwhal.", dense=True)
    hits = await reopened.search(["vs"], "narwhal", dense_query=embed("Dense narwhal."))
    assert hits[0].file_id == "g"
    await reopened.flush()
    await reopened.optimize()
    assert await reopened.count_chunks("vs") == 2
    await reopened.close()
    with pytest.raises(RuntimeError, match="dimension"):
        EdgeIndex(path, dense_dim=DIM * 2)
    again = EdgeIndex(path, dense_dim=DIM)  # the failed open released the lock
    await again.close()


async def test_edge_bounds_its_segments_and_optimises_long_ingestions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def pinned(path: Path) -> Any:
        stored = json.loads((path / edge_index.CONFIG_FILE).read_text())
        return (stored.get("optimizers") or {}).get("max_segment_size")

    # A shard made before the segment size was pinned gets it on open, data intact.
    old = tmp_path / "old"
    sparse = qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)
    qe.EdgeShard.create(str(old), qe.EdgeConfig(sparse_vectors={"lexical": sparse})).close()
    assert pinned(old) is None
    index = EdgeIndex(old)
    assert pinned(old) == edge_index.MAX_SEGMENT_KB
    await _add(index, "vs", "f", "Pinned narwhal.", dense=False)
    await index.close()
    index = EdgeIndex(old)
    assert [h.file_id for h in await index.search(["vs"], "narwhal")] == ["f"]
    await index.close()

    # A new one has it from the start; an ingestion that never pauses is optimised anyway.
    monkeypatch.setattr(edge_index, "OPTIMIZE_WHILE_WRITING_POINTS", 40)
    index = EdgeIndex(tmp_path / "new")
    try:
        assert pinned(tmp_path / "new") == edge_index.MAX_SEGMENT_KB
        for i in range(5):
            text = " ".join(f"walrus{j}" for j in range(1000))
            await _add(index, "vs", f"f{i}", text, dense=False)
        assert index._written >= 40  # no pause: the idle rule alone would wait
        await index.maintain()
        assert index._written == 0  # optimised
        assert {h.file_id for h in await index.search(["vs"], "walrus7")} == {
            f"f{i}" for i in range(5)
        }
    finally:
        await index.close()


async def test_shared_local_client_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "shared"
    first = QdrantIndex(path=path)
    second = QdrantIndex(path=path)  # a second client on the path would hit the file lock
    assert first.client is second.client
    await _add(first, "vs", "f", "Persistent narwhal.", dense=False)
    assert [h.file_id for h in await second.search(["vs"], "narwhal")] == ["f"]
    await first.close()
    assert await second.count_chunks("vs") == 1  # still open for the other holder
    await second.close()

    reopened = QdrantIndex(path=path)
    assert [h.file_id for h in await reopened.search(["vs"], "narwhal")] == ["f"]
    # The collection has no dense vector: asking for one must fail clearly.
    with_dense = QdrantIndex(path=path, dense_dim=DIM)
    with pytest.raises(RuntimeError, match="no dense vector"):
        await with_dense.ensure_collection()
    await with_dense.close()
    await reopened.close()


def test_constructor_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        QdrantIndex()
    with pytest.raises(ValueError):
        QdrantIndex(url="http://localhost:6333", path=tmp_path)
    with pytest.raises(ValueError):
        EdgeIndex(tmp_path, dense_dim=0)


def test_bm25_vectors() -> None:
    """English BM25 as Qdrant's own encoder makes it: stemmed, stopwords out, snake_case
    split, document weights tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len))."""
    assert lexical.query_terms("Elephants") == lexical.query_terms("elephant")
    assert lexical.query_terms("running") == lexical.query_terms("runs")
    assert lexical.query_terms("the of and") == []
    assert lexical.document_vector("the of and") is None
    assert lexical.query_terms("extract_text") == sorted(
        lexical.query_terms("extract") + lexical.query_terms("text")
    )
    doc = lexical.document_vector("zebra zebra lion")
    assert doc is not None and len(doc.indices) == 2
    norm = lexical.K1 * (1 - lexical.B + lexical.B * 3 / lexical.AVG_DOC_LEN)
    [zebra] = lexical.query_terms("zebra")
    weight = doc.values[doc.indices.index(zebra)]
    assert weight == pytest.approx(2 * (lexical.K1 + 1) / (2 + norm), rel=1e-4)


def test_bm25_document_vectors_equal_the_encoders(monkeypatch: pytest.MonkeyPatch) -> None:
    """`document_vector` (runs remembered, weights in Python) gives exactly what the
    encoder's own `embed_document` gives: ASCII and other scripts, combining marks,
    characters that cut words, every document length; also after forgetting the runs."""
    import random

    rng = random.Random(5)
    words = "the running dogs ran quickly isn't it don't 3.5 co-operate extract_text".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 900))) for _ in range(20)]
    texts += [
        "Naïve Über café cafe\u0301 İstanbul ß STRASSE ﬁnance Ⅻ ² ½ ǅungla",
        "fullwidth \uff13\uff14 \uff21\uff22",
        "हिन्दी भाषा का विकास ภาษาไทย 中文测试 日本語のテキスト 한국어 العربية مُحَمَّد",
        "don\u2019t l\u2019été a😀b emoji😀 “quoted” — dash…",
        "nbsp\u00a0thin\u2009zw\u200bjoin\u200d",
        "tab\tnew\nline\rcr\x0bvt\x0cff\x1cfs\x85nel\u2028ls a\u0300\u0301b \U0001d400x",
        "",
        "the of and",
        "x" * 3000,
    ]
    alphabet = [chr(c) for c in range(0x20, 0x2000)] + list("ab cd the ran, ")
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(300)]
    texts += [
        " ".join(["zebra"] * (n // 3) + [f"w{i}x" for i in range(n - n // 3)])
        for n in range(1, 700, 7)
    ]
    for text in texts:
        assert lexical.document_vector(text) == lexical.encoder_document_vector(text), text
    monkeypatch.setattr(lexical, "MAX_REMEMBERED", 10)
    for text in texts[:20]:
        assert lexical.document_vector(text) == lexical.encoder_document_vector(text), text


def test_edge_filter_translation() -> None:
    spec = build_filter(
        {
            "type": "or",
            "filters": [
                {"type": "in", "key": "a", "value": ["x", "y"]},
                {"type": "lte", "key": "d", "value": "2024-01-01T00:00:00Z"},
                {"type": "ne", "key": "n", "value": 3},
            ],
        }
    )
    assert to_edge_filter(spec).should is not None


# -- streaming ingestion pieces -----------------------------------------------------------


def test_chunk_stream_matches_whole_text(monkeypatch: pytest.MonkeyPatch) -> None:
    text = " ".join(
        f"Word{i} ünïcode 東京 {i}." + ("\n\n" if i % 7 == 0 else "") for i in range(6000)
    )
    whole = chunk_text(text, 200, 50)
    monkeypatch.setattr(chunking, "PIECE_CHARS", 5000)
    pieces = [text[i : i + 3333] for i in range(0, len(text), 3333)]
    streamed = list(chunk_stream(pieces, 200, 50))
    assert [(c.text, c.index, c.token_count) for c in streamed] == [
        (c.text, c.index, c.token_count) for c in whole
    ]


def _reference_chunks(text: str, size: int, overlap: int) -> list[tuple[str, int]]:
    """OpenAI's static strategy as this server defines it, on the whole text at once: token
    windows of `size`, the next one starting `overlap` tokens before the end of the last,
    both edges nudged to fall between whole UTF-8 characters (the end back, the next start
    forward); windows of only whitespace are left out. (Text without lone surrogates.)"""
    encoding = get_encoding()
    tokens = encoding.encode(text, disallowed_special=())
    token_bytes = encoding.decode_tokens_bytes(tokens)
    data = b"".join(token_bytes)
    offsets = [0, *itertools.accumulate(map(len, token_bytes))]
    n = len(tokens)

    def clean(i: int) -> bool:
        return i in (0, n) or (data[offsets[i]] & 0xC0) != 0x80

    out: list[tuple[str, int]] = []
    start = 0
    while start < n:
        end = min(start + size, n)
        while end > start + 1 and not clean(end):
            end -= 1
        window = data[offsets[start] : offsets[end]].decode("utf-8", errors="replace")
        if window.strip():
            out.append((window, end - start))
        if end >= n:
            break
        next_start = max(end - overlap, start + 1)
        while next_start < end and not clean(next_start):
            next_start += 1
        start = next_start
    return out


def _random_texts(seed: int, count: int) -> list[str]:
    """Texts made to catch chunk and segment edges out: words and stopwords, punctuation,
    multi-byte characters that BPE tokens split, characters that cut BM25 runs, long runs
    without a separator, blank stretches."""
    rng = random.Random(seed)
    alphabet = [
        *"abc de fgh.\n, ",
        " the",
        " of and",
        "ü",
        "東京",
        "🙂",
        "\r\n",
        "'s",
        "   ",
        "123",
        "—",
        "é",
        "a—b",
        "x" * 40,
        "ﬁ",
        "²",
        "٣",
        "\n\n",
    ]
    return [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 3000))) for _ in range(count)
    ]


SEGMENT_SETTINGS = [(800, 400), (100, 50), (100, 0), (137, 60), (120, 13)]


def test_chunks_and_their_segments_match_the_reference() -> None:
    """`chunk_stream` (streamed, windows settled as tokens arrive) makes exactly the
    reference's chunks, and `chunk_segments` cuts each chunk's text into segments that
    join back to it, consecutive chunks sharing the segments they overlap on."""
    texts = [
        *_random_texts(11, 60),
        " ".join(f"word{i} ünï 東京." for i in range(3000)),
        " ".join(f"Word{i} isn't 3.14159, ok?\n\n" for i in range(3000)),  # (ASCII)
        *(text.encode("ascii", errors="ignore").decode() for text in _random_texts(14, 30)),
    ]
    for text in texts:
        for size, overlap in SEGMENT_SETTINGS:
            pairs = list(chunking.chunk_segments([text], size, overlap))
            assert [(c.text, c.token_count) for c, _ in pairs] == _reference_chunks(
                text, size, overlap
            ), (text[:80], size, overlap)
            assert [c.index for c, _ in pairs] == list(range(len(pairs)))
            for chunk, segments in pairs:
                assert "".join(part for _, _, part in segments) == chunk.text
                assert segments[0][0] < segments[-1][1]
                assert all(a[1] == b[0] for a, b in pairwise(segments))
            if overlap:
                shared = [
                    set(s[:2] for s in a) & set(s[:2] for s in b)
                    for (_, a), (_, b) in pairwise(pairs)
                ]
                assert all(shared), (size, overlap)


def test_segmented_vectors_equal_document_vector(monkeypatch: pytest.MonkeyPatch) -> None:
    """The BM25 vectors ingestion computes once per segment (`SegmentedVectors`) equal
    `document_vector` of each chunk's whole text: runs cut by a segment edge, runs spanning
    several segments, stopwords and runs the encoder cuts further at edges, lone
    surrogates (the whole-text fallback); also after forgetting the remembered runs."""
    texts = [*_random_texts(12, 80), "zebra" * 2000, "a\ud800b " * 500]
    for text in texts:
        for size, overlap in SEGMENT_SETTINGS:
            vectors = lexical.SegmentedVectors()
            for chunk, segments in chunking.chunk_segments([text], size, overlap):
                got = vectors.vector(chunk.text, segments)
                assert got == lexical.document_vector(chunk.text), (text[:80], size, overlap)
    monkeypatch.setattr(lexical, "MAX_REMEMBERED", 10)
    vectors = lexical.SegmentedVectors()
    for chunk, segments in chunking.chunk_segments(texts[:5], 100, 50):
        assert vectors.vector(chunk.text, segments) == lexical.document_vector(chunk.text)


def test_ascii_token_lengths_are_tiktokens() -> None:
    """The Python pre-tokenizer for ASCII text splits as tiktoken's o200k does: every ASCII
    character (controls too), contractions in either case, digit runs, whitespace runs
    before words and line ends, pieces that are several tokens."""
    encoding = get_encoding()
    rng = random.Random(13)
    alphabet = [chr(c) for c in range(128)] + [
        *"aaeeoo  \n\n",
        "'s",
        "'RE",
        " 'll",
        "'D",
        "  \n ",
        "\r\n\r\n",
        "\t \x0b\x0c",
        "AbC",
        "hello",
        " World",
        "x/y\n/",
        "1234567",
        " supercalifragilistic",
        "zzqxj",
    ]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(5000)]
    texts.append(" ".join(f"Word{i} isn't 3.14159 ok?!\n\n" for i in range(2000)))
    for text in texts:
        expected = [len(b) for b in encoding.decode_tokens_bytes(encoding.encode_ordinary(text))]
        assert chunking._ascii_token_lengths(text) == expected, repr(text)


def test_iter_text_streams_and_normalises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parsing, "BLOCK_BYTES", 64)
    raw = "  first line  \r\n\r\n\r\n\r\nsecond ünï\tline \t\nthird\r" * 40 + "\n\n  "
    path = tmp_path / "big.txt"
    path.write_bytes(raw.encode())
    pieces = list(iter_text(path, "big.txt"))
    assert len(pieces) > 10  # really streamed
    assert "".join(pieces) == parsing._normalise(raw)
    path.write_bytes("\ufeff".encode("utf-16-le") + raw.encode("utf-16-le"))
    assert "".join(iter_text(path, "big.txt")) == parsing._normalise(raw)
    path.write_bytes(b"ok " * 100 + b"\xff\xfe bad")
    with pytest.raises(InvalidFileError, match="offset 300"):
        list(iter_text(path, "big.txt"))


def test_line_ends_and_blank_lines_as_the_regexes_did() -> None:
    import random

    rng = random.Random(1)
    for _ in range(20000):
        text = "".join(rng.choice(" \t\n\n\nab\r") for _ in range(rng.randint(0, 30)))
        expected = re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+\n", "\n", text))
        assert parsing._fold_blank_lines(parsing._strip_line_ends(text)) == expected, text


def test_text_cap_and_deadline(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("word " * 1000)
    with pytest.raises(InvalidFileError, match="more than 100 characters"):
        list(iter_text(path, "a.txt", limits=Limits(max_chars=100)))
    with pytest.raises(ParseTimeout):
        list(iter_text(path, "a.txt", limits=Limits(deadline=time.monotonic() - 1)))


@pytest.mark.parametrize("processes", [0, 2])
async def test_page_pool_reads_pages_with_their_bm25_vectors(
    tmp_path: Path, processes: int
) -> None:
    """Pages parsed, chunked and BM25-encoded in worker processes (or a thread) are the
    chunks `chunk_text` makes, with the vectors `document_vector` computes; parsing errors
    and the deadline come through as themselves."""
    text = " ".join(f"Sentence {i} about zebras, lions and the river." for i in range(12000))
    path = tmp_path / "big.txt"
    path.write_text(text)
    pool = PagePool(processes)
    try:
        reader = pool.reader(FileToChunk(path, "big.txt", None, 200, 50, Limits()))
        pages: list[list[Chunk]] = []
        while (page := await reader.next(time.monotonic() + 120)) is not None:
            pages.append(page)
        assert await reader.next(time.monotonic() + 120) is None
        reader.close()
        assert len(pages) > 2 and all(len(p) == PAGE_CHUNKS for p in pages[:-1])
        got = [chunk for page in pages for chunk in page]
        assert [(c.text, c.index, c.token_count) for c in got] == [
            (c.text, c.index, c.token_count) for c in chunk_text(text, 200, 50)
        ]
        for chunk in got[::37]:
            assert chunk.sparse == lexical.document_vector(chunk.text)
            assert lexical.chunk_vector(chunk) == chunk.sparse

        stopwords = tmp_path / "stop.txt"
        stopwords.write_text("the of and " * 10)
        reader = pool.reader(FileToChunk(stopwords, "stop.txt", None, 200, 50, Limits()))
        [only] = await reader.next(time.monotonic() + 120) or []
        assert only.sparse == lexical.Sparse([], []) and lexical.chunk_vector(only) is None
        reader.close()

        reader = pool.reader(FileToChunk(tmp_path / "x.bin", "x.bin", None, 200, 50, Limits()))
        with pytest.raises(UnsupportedFileError):
            await reader.next(time.monotonic() + 120)
        reader.close()
        reader = pool.reader(FileToChunk(path, "big.txt", None, 200, 50, Limits(max_chars=1000)))
        with pytest.raises(InvalidFileError, match="more than 1,000 characters"):
            await reader.next(time.monotonic() + 120)
        reader.close()
        reader = pool.reader(FileToChunk(path, "big.txt", None, 200, 50, Limits()))
        with pytest.raises(TimeoutError):
            await reader.next(time.monotonic() - 1)
        reader.close()
    finally:
        pool.shutdown()


async def test_edge_lets_go_of_written_pages(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path / "index")
    try:
        chunks = chunk_text(" ".join(f"zebra{i % 50} lion river" for i in range(20000)), 100, 20)
        await index.upsert_chunks("vs_1", "file_1", "a.txt", chunks)
        await index.flush()  # flushes, then unmaps the shard's resident file pages
        assert release_resident_pages(index.path) > 0
        hits = await index.search(["vs_1"], "zebra7 lion")
        assert hits and hits[0].file_id == "file_1"
        assert await index.count_chunks("vs_1") == len(chunks)
    finally:
        await index.close()


def _zip_bomb_docx(path: Path, member_bytes: int) -> None:
    """A DOCX whose document.xml inflates ~1000x (zeros compress that well)."""
    _docx(path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("word/padding.xml", "w") as member:
            block = b"0" * (1 << 20)
            for _ in range(member_bytes >> 20):
                member.write(block)


def test_zip_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    path = tmp_path / "bomb.docx"
    _zip_bomb_docx(path, 64 << 20)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(InvalidFileError, match="zip bomb"):
        extract_text(path, "bomb.docx")
    small = tmp_path / "ok.docx"
    _docx(small)
    with pytest.raises(InvalidFileError, match="unpacks to"):
        extract_text(small, "ok.docx", limits=Limits(max_unzipped_bytes=1000))
    assert extract_text(small, "ok.docx", limits=Limits(max_unzipped_bytes=10 << 20))


# -- embeddings -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    """A real OpenAI-compatible HTTP server: litellm runs unmocked against it."""
    with FakeUpstream(embedding_dim=DIM) as server:
        yield server


@pytest.fixture
async def drained() -> AsyncIterator[None]:
    yield
    await drain_litellm_logging()  # else closing the event loop can hang (see its docstring)


def _embedder(upstream: FakeUpstream, **kwargs: Any) -> Embedder:
    return Embedder(
        "openai/fake-embed",
        api_base=upstream.base_url,
        api_key="sk-test",
        initial_backoff=0.001,
        **kwargs,
    )


async def test_embedder_batches_and_retries(upstream: FakeUpstream, drained: None) -> None:
    upstream.reset()
    upstream.fail_next_embeddings(1, 429)
    embedder = _embedder(upstream, batch_size=3)
    texts = [f"text {i}" for i in range(7)] + [""]
    vectors = await embedder.embed(texts)
    assert len(vectors) == len(texts)
    for text, vector in zip(texts, vectors, strict=True):
        # Empty strings go out as " " (providers reject ""); float32 on the wire.
        assert vector == pytest.approx(fake_embedding(text or " ", DIM), abs=1e-6)
    sent = [r["input"] for r in upstream.embedding_requests]
    assert sent[0] == sent[1] == texts[:3]  # the rate-limited batch was sent again
    assert sent[2:] == [texts[3:6], [*texts[6:7], " "]]
    assert {r["model"] for r in upstream.embedding_requests} == {"fake-embed"}
    assert await embedder.dimension() == DIM
    assert await _embedder(upstream, dimensions=16).dimension() == 16


def test_embedding_order_comes_from_index() -> None:
    data = [{"index": 1, "embedding": [0.0, 1.0]}, {"index": 0, "embedding": [1.0, 0.0]}]
    assert _vectors({"data": data}, 2) == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(EmbeddingError, match="1 embeddings for 2 inputs"):
        _vectors({"data": data[:1]}, 2)


async def test_embedder_permanent_error_and_retry_limit(
    upstream: FakeUpstream, drained: None
) -> None:
    upstream.reset()
    upstream.fail_next_embeddings(1, 401)
    with pytest.raises(EmbeddingError, match="Incorrect API key"):
        await _embedder(upstream).embed(["x"])
    assert len(upstream.embedding_requests) == 1  # not retried

    upstream.reset()
    upstream.fail_next_embeddings(1000, 503)
    with pytest.raises(EmbeddingError, match="after 2 attempt"):
        await _embedder(upstream, max_retries=1).embed(["x"])
    # litellm's OpenAI client also retries inside each attempt (litellm turns
    # max_retries=0 into its default), so only a lower bound is certain.
    assert len(upstream.embedding_requests) >= 2
    upstream.reset()
    assert await _embedder(upstream).embed(["works again"])


def test_json_round_trip_is_readable(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"k": "ünïcode"}), "utf-8")
    assert '"k": "ünïcode"' in extract_text(tmp_path / "x.json", "x.json", None)
