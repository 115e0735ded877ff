"""Time-ordered 128-bit ids (UUIDv7 layout, RFC 9562). Dependency-free; the SDK uses it too.

Ids are chosen by clients. Time-ordered ones keep the journal's id index append-mostly, which is
what TigerBeetle recommends for the same reason; any unique 128-bit value is accepted."""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_id() -> int:
    """A fresh UUIDv7 as an int: 48-bit Unix ms, version 7, 12-bit counter, variant, 62 random
    bits. Monotonic within a process, even within one millisecond."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                ms += 1
                _counter = 0
        else:
            _counter = 0
        _last_ms = ms
        counter = _counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    return (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand


def new_uuid() -> str:
    return str(uuid.UUID(int=new_id()))
