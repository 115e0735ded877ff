"""A Bloom filter over every transfer id the ledger has stored, so that brand-new ids (nearly
all of them) skip the database lookup that prefetch would otherwise do for each.

"No" is certain; "maybe" costs one indexed lookup. The size is fixed (memory stays flat however
long the ledger runs): 2**27 bits, three probes, under 1% false "maybe"s up to ten million ids;
past that the rate rises and the ledger only does more lookups, never anything wrong.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

BITS_LOG2: Final = 27
_MASK: Final = (1 << BITS_LOG2) - 1


class IdFilter:
    __slots__ = ("_bits", "count")

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._bits = bytearray(1 << (BITS_LOG2 - 3))
        self.count = 0
        for i in ids:
            self.add(i)

    def add(self, x: int) -> None:
        # hash() of an int is x mod 2**61-1 (C speed); it mixes every 61-bit chunk of the id,
        # so time-ordered, random and sequential ids all spread. Three windows of its bits.
        h = hash(x)
        bits = self._bits
        for p in (h & _MASK, (h >> 17) & _MASK, (h >> 34) & _MASK):
            bits[p >> 3] |= 1 << (p & 7)
        self.count += 1

    def might_contain(self, x: int) -> bool:
        h = hash(x)
        bits = self._bits
        a, b, c = h & _MASK, (h >> 17) & _MASK, (h >> 34) & _MASK
        return bool(
            bits[a >> 3] >> (a & 7) & 1
            and bits[b >> 3] >> (b & 7) & 1
            and bits[c >> 3] >> (c & 7) & 1
        )
