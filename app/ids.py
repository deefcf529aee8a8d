"""OpenAI-style object ids: a prefix and 24 unguessable alphanumeric characters."""

from __future__ import annotations

import secrets
import string
import threading
import time

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(24))


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
