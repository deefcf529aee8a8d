"""OpenAI-style object ids: a prefix and 24 unguessable alphanumeric characters."""

from __future__ import annotations

import secrets
import string
import threading
import time

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    # One read of the OS's randomness per id (not one per character), as a base-62 number:
    # 24 characters carry 142 bits; the 160 bits read keep the digits uniform enough.
    number = int.from_bytes(secrets.token_bytes(20))
    chars = []
    for _ in range(24):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return prefix + "".join(chars)


def now() -> int:
    """Unix seconds, as OpenAI reports `created_at`."""
    return int(time.time())


_seq_lock = threading.Lock()
_last_seq = 0


def next_seq() -> int:
    """A strictly increasing 64-bit sort key (nanoseconds) for this process.

    `created_at` has one-second resolution, so list order within a second is carried
    by this key; ties across processes fall back to the id.
    """
    global _last_seq
    with _seq_lock:
        _last_seq = max(_last_seq + 1, time.time_ns())
        return _last_seq
