"""Token-based chunking, matching OpenAI's `static` chunking strategy.

Token counts use tiktoken's `o200k_base` (the GPT-4o family encoding). tiktoken
normally downloads its BPE files on first use; this machine and our deployments may
have no route to that host, so we first load the copy that litellm (a dependency)
ships inside its wheel, verifying the same SHA-256 that tiktoken itself checks, and
only fall back to tiktoken's own loader (cache dir / download) if that copy is missing.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import importlib.util
import itertools
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tiktoken

ENCODING_NAME = "o200k_base"

DEFAULT_MAX_CHUNK_SIZE_TOKENS = 800
DEFAULT_CHUNK_OVERLAP_TOKENS = 400
MIN_CHUNK_SIZE_TOKENS = 100
MAX_CHUNK_SIZE_TOKENS = 4096

# Identity of the o200k_base definition in tiktoken_ext.openai_public (tiktoken 0.12).
# Duplicated because tiktoken only exposes it through a constructor that downloads.
_O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
_O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
_O200K_SPECIAL_TOKENS = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}
_O200K_PAT_STR = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

_encoding: tiktoken.Encoding | None = None
_encoding_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    token_count: int
    index: int
    # The chunk's BM25 vector when computed ahead (ingestion does it where it parses, see
    # `app.retrieval.page_pool`); None: the index computes it. An empty vector: no term.
    sparse: Any = None

    def __reduce__(self) -> tuple[Any, ...]:
        # Pages of chunks cross processes: plain arguments pickle several times faster than
        # a slots dataclass's default state (which calls `dataclasses.fields` per object).
        return Chunk, (self.text, self.token_count, self.index, self.sparse)


@dataclass(frozen=True, slots=True)
class ChunkingConfig:
    max_chunk_size_tokens: int = DEFAULT_MAX_CHUNK_SIZE_TOKENS
    chunk_overlap_tokens: int = DEFAULT_CHUNK_OVERLAP_TOKENS


def _shipped_bpe_file() -> Path | None:
    """litellm's wheel carries tiktoken cache files named sha1(url), as tiktoken does."""
    spec = importlib.util.find_spec("litellm")  # locates without importing (slow import)
    if spec is None or not spec.submodule_search_locations:
        return None
    name = hashlib.sha1(_O200K_URL.encode()).hexdigest()
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "litellm_core_utils" / "tokenizers" / name
        if candidate.is_file():
            return candidate
    return None


def _load_shipped_encoding() -> tiktoken.Encoding | None:
    path = _shipped_bpe_file()
    if path is None:
        return None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != _O200K_SHA256:
        return None
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name=ENCODING_NAME,
        pat_str=_O200K_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens=_O200K_SPECIAL_TOKENS,
    )


def get_encoding() -> tiktoken.Encoding:
    """The process-wide tokenizer, loaded once (loading costs ~0.5 s)."""
    global _encoding
    if _encoding is None:
        with _encoding_lock:
            if _encoding is None:
                _encoding = _load_shipped_encoding() or tiktoken.get_encoding(ENCODING_NAME)
    return _encoding


def count_tokens(text: str) -> int:
    return len(get_encoding().encode(text, disallowed_special=()))


def validate_chunking(max_chunk_size_tokens: int, chunk_overlap_tokens: int) -> None:
    """Raise ValueError with an OpenAI-style message if the static strategy is out of bounds."""
    prefix = "Invalid 'chunking_strategy.static"
    for name, value in (
        ("max_chunk_size_tokens", max_chunk_size_tokens),
        ("chunk_overlap_tokens", chunk_overlap_tokens),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(
                f"{prefix}.{name}': expected an integer, but got {type(value).__name__} instead."
            )
    if max_chunk_size_tokens < MIN_CHUNK_SIZE_TOKENS:
        raise ValueError(
            f"{prefix}.max_chunk_size_tokens': integer below minimum value. Expected a value "
            f">= {MIN_CHUNK_SIZE_TOKENS}, but got {max_chunk_size_tokens} instead."
        )
    if max_chunk_size_tokens > MAX_CHUNK_SIZE_TOKENS:
        raise ValueError(
            f"{prefix}.max_chunk_size_tokens': integer above maximum value. Expected a value "
            f"<= {MAX_CHUNK_SIZE_TOKENS}, but got {max_chunk_size_tokens} instead."
        )
    if chunk_overlap_tokens < 0:
        raise ValueError(
            f"{prefix}.chunk_overlap_tokens': integer below minimum value. Expected a value "
            f">= 0, but got {chunk_overlap_tokens} instead."
        )
    if chunk_overlap_tokens > max_chunk_size_tokens // 2:
        raise ValueError(
            f"{prefix}.chunk_overlap_tokens': chunk_overlap_tokens must not exceed half of "
            f"max_chunk_size_tokens ({max_chunk_size_tokens // 2}), but got "
            f"{chunk_overlap_tokens} instead."
        )


def resolve_chunking_strategy(strategy: Mapping[str, Any] | None) -> ChunkingConfig:
    """Turn an API `chunking_strategy` object (`auto` / `static` / absent) into a config."""
    if strategy is None or strategy.get("type") == "auto":
        return ChunkingConfig()
    if strategy.get("type") != "static":
        raise ValueError(
            f"Invalid 'chunking_strategy.type': expected one of 'auto' or 'static', "
            f"but got {strategy.get('type')!r} instead."
        )
    static = strategy.get("static")
    if not isinstance(static, Mapping):
        raise ValueError("Missing required parameter: 'chunking_strategy.static'.")
    missing = [
        k for k in ("max_chunk_size_tokens", "chunk_overlap_tokens") if static.get(k) is None
    ]
    if missing:
        raise ValueError(f"Missing required parameter: 'chunking_strategy.static.{missing[0]}'.")
    config = ChunkingConfig(static["max_chunk_size_tokens"], static["chunk_overlap_tokens"])
    validate_chunking(config.max_chunk_size_tokens, config.chunk_overlap_tokens)
    return config


def chunk_text(
    text: str,
    max_chunk_size_tokens: int = DEFAULT_MAX_CHUNK_SIZE_TOKENS,
    chunk_overlap_tokens: int = DEFAULT_CHUNK_OVERLAP_TOKENS,
) -> list[Chunk]:
    """Split text into windows of at most `max_chunk_size_tokens` tokens, consecutive
    windows sharing `chunk_overlap_tokens` tokens (`chunk_stream` over one piece)."""
    return list(chunk_stream([text], max_chunk_size_tokens, chunk_overlap_tokens))


PIECE_CHARS = 1 << 20  # chunk_stream encodes at most about this many characters at once


def chunk_stream(
    pieces: Iterable[str],
    max_chunk_size_tokens: int = DEFAULT_MAX_CHUNK_SIZE_TOKENS,
    chunk_overlap_tokens: int = DEFAULT_CHUNK_OVERLAP_TOKENS,
) -> Iterator[Chunk]:
    """`chunk_text` over text arriving in pieces, in bounded memory: the text is encoded a
    piece (about PIECE_CHARS) at a time and only the tokens of the current window are kept,
    so a 512 MB file never becomes one string or one token list.

    Pieces are re-cut after a newline that precedes a non-space character, where the
    tokenizer splits anyway, so the tokens are those of the whole text in practice; text
    of one piece (under PIECE_CHARS) is chunked exactly as a whole.

    Window edges are nudged back to token boundaries that fall between whole UTF-8
    characters, since a byte-level BPE token can hold part of a character and slicing
    there would leave U+FFFD garbage at both chunk edges.
    """
    for chunk, _ in chunk_segments(pieces, max_chunk_size_tokens, chunk_overlap_tokens):
        yield chunk


# A stretch of a chunk's text between the places where it overlaps its neighbours: its
# first and last token (absolute, from the start of the text) and its text. Consecutive
# chunks share segments (the tokens they overlap on), so per-chunk work on the text, such
# as the BM25 vector (`lexical.SegmentedVectors`), can be done once per segment.
Segment = tuple[int, int, str]


def chunk_segments(
    pieces: Iterable[str],
    max_chunk_size_tokens: int = DEFAULT_MAX_CHUNK_SIZE_TOKENS,
    chunk_overlap_tokens: int = DEFAULT_CHUNK_OVERLAP_TOKENS,
) -> Iterator[tuple[Chunk, list[Segment]]]:
    """`chunk_stream`'s chunks, each with its text cut into `Segment`s where the previous
    window ended and where the next one starts (the chunk's text is their texts joined).
    Cuts fall only between whole UTF-8 characters, so decoding the segments apart gives the
    text decoding the window whole gives."""
    validate_chunking(max_chunk_size_tokens, chunk_overlap_tokens)
    encoding = get_encoding()
    data = bytearray()  # the bytes of tokens [0, n) of the buffer
    offsets = [0]  # offsets[i] = where buffered token i starts; offsets[n] = len(data)
    base = 0  # the absolute index of the buffer's token 0
    start = 0  # the current window's first token (buffer-relative)
    previous_end = 0  # where the window before the current one ended (absolute)
    count = 0  # chunks emitted

    def clean(i: int, n: int) -> bool:
        return i in (0, n) or (data[offsets[i]] & 0xC0) != 0x80

    def decode(first: int, end: int) -> str:
        return bytes(data[offsets[first] : offsets[end]]).decode("utf-8", errors="replace")

    def windows(final: bool) -> Iterator[tuple[Chunk, list[Segment]]]:
        nonlocal start, count, previous_end
        n = len(offsets) - 1
        # A window is settled once the token after it is known (or the text has ended).
        while start < n and (final or start + max_chunk_size_tokens < n):
            end = min(start + max_chunk_size_tokens, n)
            while end > start + 1 and not clean(end, n):
                end -= 1
            next_start = n
            if end < n:
                next_start = max(end - chunk_overlap_tokens, start + 1)
                while next_start < end and not clean(next_start, n):
                    next_start += 1
            cuts = sorted(
                {c for c in (previous_end - base, next_start) if start < c < end and clean(c, n)}
            )
            bounds = [start, *cuts, end]
            segments = [(base + a, base + b, decode(a, b)) for a, b in itertools.pairwise(bounds)]
            text = segments[0][2] if not cuts else "".join(s[2] for s in segments)
            if text.strip():
                yield Chunk(text=text, token_count=end - start, index=count), segments
                count += 1
            previous_end = base + end
            start = next_start

    lengths = _token_lengths()
    for text, encoded in _encoded(_recut(pieces), encoding):
        # BPE is lossless: the tokens' bytes, joined, are the text's UTF-8 bytes.
        raw = text.encode("utf-8", errors="surrogatepass")
        token_lengths = (
            _ascii_token_lengths(text) if encoded is None else map(lengths.__getitem__, encoded)
        )
        added = len(offsets)
        offsets += itertools.islice(itertools.accumulate(token_lengths, initial=len(data)), 1, None)
        if offsets[-1] != len(data) + len(raw):  # lone surrogates and such: the slow way
            del offsets[added:]
            tokens = encoding.encode(text, disallowed_special=()) if encoded is None else encoded
            pieces_bytes = encoding.decode_tokens_bytes(tokens)
            offsets += itertools.islice(
                itertools.accumulate(map(len, pieces_bytes), initial=len(data)), 1, None
            )
            raw = b"".join(pieces_bytes)
        data += raw
        yield from windows(final=False)
        if start > 0:  # forget the tokens before the current window
            cut = offsets[start]
            del data[:cut]
            offsets = [o - cut for o in offsets[start:]]
            base += start
            start = 0
    yield from windows(final=True)


_lengths: list[int] | None = None
_single_ascii: frozenset[str] = frozenset()  # ASCII strings that are one token


def _token_lengths() -> list[int]:
    """Byte length of every token id of the encoding (built once, ~0.3 s, with the set of
    ASCII strings that are one token, for `_ascii_token_lengths`)."""
    global _lengths, _single_ascii
    if _lengths is None:
        encoding = get_encoding()
        table = [0] * encoding.n_vocab
        single: set[str] = set()
        for token in range(encoding.n_vocab):
            try:
                piece = encoding.decode_single_token_bytes(token)
            except KeyError:
                continue
            table[token] = len(piece)
            if piece.isascii():
                single.add(piece.decode("ascii"))
        _single_ascii = frozenset(single)
        _lengths = table
    return _lengths


# o200k's pre-tokenizer (`_O200K_PAT_STR`) on ASCII text, where its Unicode classes come
# down to ASCII ones (\p{L}: A-Za-z, \p{Lu}: A-Z, \p{Ll}: a-z, \p{N}: 0-9, no Lt/Lm/Lo/M; \s:
# the White_Space characters \t \n \v \f \r and space, not \x1c-\x1f as Python's \s).
# Python's `re` is leftmost-first and backtracking like tiktoken's fancy_regex, so it
# splits the same (`test_retrieval` checks it against tiktoken on random ASCII).
_S = r"[\t\n\x0b\x0c\r ]"
_ASCII_PRETOKENIZER = re.compile(
    "|".join(
        [
            r"[^\r\nA-Za-z0-9]?[A-Z]*[a-z]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"[^\r\nA-Za-z0-9]?[A-Z]+[a-z]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"[0-9]{1,3}",
            r" ?[^\t\n\x0b\x0c\r A-Za-z0-9]+[\r\n/]*",
            rf"{_S}*[\r\n]+",
            rf"{_S}+(?![^\t\n\x0b\x0c\r ])",
            rf"{_S}+",
        ]
    )
)
_split_pieces: dict[str, list[int]] = {}  # an ASCII piece of several tokens -> their lengths


def _ascii_token_lengths(text: str) -> list[int]:
    """The byte lengths of the o200k tokens of ASCII `text`, about 2.5x faster than
    tiktoken's `encode` (whose regex is most of its time): the pieces of the
    pre-tokenizer, and as in tiktoken a piece that is a token is one token, any other is
    BPE-merged (by tiktoken). Most pieces are tokens, so mostly this is a regex and `len`
    of each piece, in C."""
    _token_lengths()
    pieces = _ASCII_PRETOKENIZER.findall(text)
    several = set(pieces).difference(_single_ascii)
    if not several:
        return list(map(len, pieces))
    split = {piece: _piece_lengths(piece) for piece in several}
    out: list[int] = []
    for piece in pieces:
        parts = split.get(piece)
        if parts is None:
            out.append(len(piece))
        else:
            out += parts
    return out


def _piece_lengths(piece: str) -> list[int]:
    """The byte lengths of the tokens BPE makes of one ASCII piece (remembered)."""
    parts = _split_pieces.get(piece)
    if parts is None:
        if len(_split_pieces) >= 100_000:
            _split_pieces.clear()
        table = _token_lengths()
        tokens = get_encoding()._core_bpe.encode_single_piece(piece.encode("ascii"))
        parts = _split_pieces[piece] = [table[token] for token in tokens]
    return parts


_encode_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _encoded(
    pieces: Iterable[str], encoding: tiktoken.Encoding
) -> Iterator[tuple[str, list[int] | None]]:
    """Each piece with its tokens; None for an ASCII piece, whose token lengths
    `_ascii_token_lengths` gives faster than tiktoken (and no tokens are needed). Any other
    piece of a long text (PIECE_CHARS // 4 or more) is encoded in a thread while the one
    before it is chunked (and the chunks' consumer, e.g. the BM25 encoding, runs):
    tiktoken releases the GIL, so a long file keeps two cores busy. (A generator closed
    early leaves at most one piece encoding, whose result goes.)"""
    global _encode_pool
    pending: tuple[str, concurrent.futures.Future[list[int]] | None] | None = None
    for text in pieces:
        future = None
        if len(text) >= PIECE_CHARS // 4 and not text.isascii():
            if _encode_pool is None:
                with _encoding_lock:
                    if _encode_pool is None:
                        _encode_pool = concurrent.futures.ThreadPoolExecutor(
                            max_workers=2, thread_name_prefix="tiktoken"
                        )
            future = _encode_pool.submit(encoding.encode, text, disallowed_special=())
        if pending is not None:
            yield _tokens(pending, encoding)
        pending = (text, future)
    if pending is not None:
        yield _tokens(pending, encoding)


def _tokens(
    piece: tuple[str, concurrent.futures.Future[list[int]] | None], encoding: tiktoken.Encoding
) -> tuple[str, list[int] | None]:
    text, future = piece
    if future is not None:
        return text, future.result()
    if text.isascii():
        return text, None
    return text, encoding.encode(text, disallowed_special=())


def _recut(pieces: Iterable[str]) -> Iterator[str]:
    """Pieces of about PIECE_CHARS, each cut where the tokenizer splits anyway (see
    `_cut_point`)."""
    pending = ""
    for piece in pieces:
        pending += piece
        while len(pending) >= PIECE_CHARS:
            cut = _cut_point(pending, PIECE_CHARS)
            yield pending[:cut]
            pending = pending[cut:]
    if pending:
        yield pending


def _cut_point(text: str, near: int) -> int:
    """An index at or before `near` where o200k's pre-tokenizer splits: before a space or a
    newline that precedes a non-space character (such a space starts the next word's
    token; a newline ends its own). Falls back to `near` for text without any."""
    floor = near // 2
    position = near
    while position > floor:
        found = max(text.rfind(" ", floor, position), text.rfind("\n", floor, position))
        if found < 0:
            break
        if found + 1 < len(text) and not text[found + 1].isspace():
            return found if text[found] == " " else found + 1
        position = found
    return near
