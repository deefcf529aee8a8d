"""OpenAI-style object ids: a prefix and 24 unguessable alphanumeric characters."""

from __future__ import annotations

import os
import string
import threading
import time

_ALPHABET = string.ascii_letters + string.digits
_ID_BYTES = 20
_POOL_BYTES = _ID_BYTES * 256


class _Randomness:
    """The OS's randomness read 5 KiB at a time: one system call per 256 ids. (Each call
    gives up the GIL, and getting it back can wait for another thread's switch interval.)
    A forked child starts with an empty pool, so parent and child never share bytes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool = b""
        self.used = 0

    def take(self) -> bytes:
        with self.lock:
            if self.used + _ID_BYTES > len(self.pool):
                self.pool, self.used = os.urandom(_POOL_BYTES), 0
            start, self.used = self.used, self.used + _ID_BYTES
            return self.pool[start : self.used]

    def forget(self) -> None:
        self.lock = threading.Lock()
        self.pool, self.used = b"", 0


_randomness = _Randomness()
os.register_at_fork(after_in_child=_randomness.forget)


def new_id(prefix: str) -> str:
    # As a base-62 number: 24 characters carry 142 bits; the 160 bits read keep the digits
    # uniform enough.
    number = int.from_bytes(_randomness.take())
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
