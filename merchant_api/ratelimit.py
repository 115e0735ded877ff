"""Each merchant key's rate limit, one bucket per key shared by every HTTP worker of a server.

A token bucket per key: ``rate_per_s`` requests a second, up to ``burst`` at once. The buckets
live in a small table in a file that each worker maps into memory (``ledger serve`` makes it
in its private link directory and names it to the workers), so a merchant gets its whole rate
whichever workers its connections land on, and no more than that however many there are.
Before, each of N workers kept 1/N of every bucket: a merchant whose connections all reached
one worker was limited to 1/N of its rate.

Each slot holds a key's hash, its tokens and when they were counted (``CLOCK_MONOTONIC``, the
same clock in every process). A spend locks the table for the other processes (an ``fcntl``
record lock, released by the kernel if a worker dies holding it) and for this process's other
threads (a ``threading.Lock``: record locks do not exclude threads of one process). A key looks
for its slot among :data:`PROBE` from its hash's place; a slot whose bucket has refilled is as
good as free, so a key that went quiet gives its slot up. If every one is held by a key still
counting (a table far too small for the keys in use), the request is let through: a rate limit
that fails closed would refuse payments for a reason no merchant caused.

Nothing is kept across restarts: a new server starts every bucket full.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Final

SLOTS: Final = 16_384
PROBE: Final = 32
_SLOT: Final = struct.Struct("<Qdq")  # key hash (0: never used), tokens, at (monotonic ns)


class SharedBuckets:
    """Token buckets by key in the table at ``path`` (made, zeroed, if missing; ``None``: a
    private table no other process sees, for a server in one process and for tests)."""

    def __init__(
        self, path: Path | None, *, rate_per_s: float, burst: float, slots: int = SLOTS
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")
        self.rate_per_s, self.burst, self.slots = rate_per_s, burst, slots
        size = slots * _SLOT.size
        if path is None:
            with tempfile.TemporaryFile() as private:  # unlinked: gone with the last descriptor
                self._fd = os.dup(private.fileno())
        else:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)  # zeros: every slot unused
        self._map = mmap.mmap(self._fd, size)
        self._threads = threading.Lock()
        self._refill_ns = int(burst / rate_per_s * 1e9)

    def take(self, key: str) -> float:
        """Spend one request of ``key``; 0 if allowed, else seconds until the next one is."""
        wanted = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest()) | 1
        start = wanted % self.slots
        with self._threads:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                now = time.monotonic_ns()
                free = None
                for i in range(min(PROBE, self.slots)):
                    offset = (start + i) % self.slots * _SLOT.size
                    held, tokens, at = _SLOT.unpack_from(self._map, offset)
                    if held == wanted:
                        return self._spend(offset, wanted, tokens, at, now)
                    if free is None and (held == 0 or now - at >= self._refill_ns):
                        free = offset
                if free is None:
                    return 0.0  # no room: let it through (see the module's docstring)
                return self._spend(free, wanted, self.burst, now, now)
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _spend(self, offset: int, key: int, tokens: float, at: int, now: int) -> float:
        tokens = min(self.burst, tokens + (now - at) / 1e9 * self.rate_per_s)
        if tokens < 1:
            _SLOT.pack_into(self._map, offset, key, tokens, now)
            return (1 - tokens) / self.rate_per_s
        _SLOT.pack_into(self._map, offset, key, tokens - 1, now)
        return 0.0

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
