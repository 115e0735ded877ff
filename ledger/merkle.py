"""RFC 9162 (Certificate Transparency v2) Merkle tree hashes, proofs and proof verification.

Pure functions over 32-byte SHA-256 hashes, stdlib only, so the server that builds proofs and the
``wallet_sdk`` that checks them run the same code. The tree is the one of RFC 9162 section 2.1.1::

    MTH({})     = SHA-256()
    MTH({d0})   = SHA-256(0x00 || d0)                                 (leaf hash)
    MTH(D[n])   = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))         (node hash)
                  with k the largest power of two smaller than n

Proofs are built by one algorithm fed from two hash sources. A :data:`NodeReader` returns the hash
of a *complete* subtree (2**level leaves, aligned to a multiple of 2**level); a store that keeps
those hashes answers any proof with O(log n) reads, because only the right edge of a tree is ever
incomplete and an incomplete range is folded from the complete subtrees it decomposes into. The
list-based functions compute every level once and hand a reader over it to the same code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Final, TypeAlias, TypeGuard

__all__ = [
    "HASH_SIZE",
    "AppendedLeaves",
    "NodeReader",
    "consistency_proof",
    "consistency_proof_from_nodes",
    "inclusion_proof",
    "inclusion_proof_from_nodes",
    "leaf_hash",
    "node_hash",
    "root",
    "root_from_nodes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32

NodeReader: TypeAlias = Callable[[int, int], bytes]
"""``node(level, index)`` -> hash of the complete subtree of leaves [index, index + 1) << level."""

_EMPTY_ROOT: Final = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    """Hash of one log entry: SHA-256(0x00 || entry); the prefix keeps leaves and nodes apart."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


# --- shared helpers ------------------------------------------------------------------------------


def _require_size(name: str, value: int) -> None:
    """Reject what cannot be a tree size or index, so bad requests fail loudly in the builders."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``): RFC 9162's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def _range_hash(start: int, end: int, node: NodeReader) -> bytes:
    """MTH(D[start:end]) for a non-empty range with ``start`` a multiple of bit_ceil(end - start).

    Every range the PATH/SUBPROOF recursion visits has that shape. It is the complete subtrees of
    the binary decomposition of its length, largest first, folded right to left: one ``node()``
    call per set bit, and exactly one call when the range is itself a complete subtree.
    """
    length = end - start
    parts: list[bytes] = []
    pos = start
    for level in reversed(range(length.bit_length())):
        if length >> level & 1:
            parts.append(node(level, pos >> level))
            pos += 1 << level
    acc = parts.pop()
    while parts:
        acc = node_hash(parts.pop(), acc)
    return acc


# --- node-based: O(log n) reads of stored complete-subtree hashes ---------------------------------


def root_from_nodes(size: int, node: NodeReader) -> bytes:
    """MTH(D[0:size]) from at most popcount(size) stored subtree hashes."""
    _require_size("size", size)
    return _EMPTY_ROOT if size == 0 else _range_hash(0, size, node)


def inclusion_proof_from_nodes(index: int, size: int, node: NodeReader) -> list[bytes]:
    """RFC 9162 section 2.1.3.1 PATH(index, D[0:size]), the sibling nearest the leaf first.

    Computed bottom-up, as transparency-dev/merkle's ``proof.Inclusion`` does, rather than by
    the RFC's recursion (which re-splits the range at every level): below level ``inner``, where
    ``index`` and ``size - 1`` part, every sibling is a complete subtree except perhaps the last,
    which may end at the tree's edge; above it, the path runs along the right border and takes
    the left sibling wherever ``index`` is a right child. Same nodes, same order, a third of the
    time (every accepted payment's receipt carries one)."""
    _require_size("index", index)
    _require_size("size", size)
    if index >= size:
        raise ValueError(f"index {index} is not below tree size {size}")
    inner = (index ^ (size - 1)).bit_length()
    path = [node(level, (index >> level) ^ 1) for level in range(inner - 1)]
    if inner:
        level = inner - 1
        start = ((index >> level) ^ 1) << level  # complete, or the right one on the tree's edge
        path.append(_range_hash(start, min(start + (1 << level), size), node))
    level, above = inner, index >> inner
    while above:
        if above & 1:
            path.append(node(level, above - 1))
        above >>= 1
        level += 1
    return path


def consistency_proof_from_nodes(old_size: int, new_size: int, node: NodeReader) -> list[bytes]:
    """RFC 9162 section 2.1.4.1 PROOF(old_size, D[0:new_size]) = SUBPROOF(old_size, D, true).

    Equal sizes give the empty proof. ``old_size == 0`` is refused, as by transparency-dev/merkle
    (``proof.Consistency``): the RFC defines the proof only for 0 < old_size, see
    :func:`verify_consistency`.
    """
    _require_size("old_size", old_size)
    _require_size("new_size", new_size)
    if old_size > new_size:
        raise ValueError(f"old_size {old_size} exceeds new_size {new_size}")
    if old_size == 0:
        raise ValueError("a consistency proof from the empty tree is not defined (RFC 9162 2.1.4)")
    proof: list[bytes] = []
    lo, hi = 0, new_size
    old_root_is_node = True  # the RFC's ``b``: MTH(D[0:old_size]) is this subtree's own root
    while old_size != hi:  # invariant: lo < old_size <= hi
        mid = lo + _split(hi - lo)
        if old_size <= mid:
            proof.append(_range_hash(mid, hi, node))
            hi = mid
        else:
            proof.append(_range_hash(lo, mid, node))
            lo = mid
            old_root_is_node = False
    if not old_root_is_node:
        proof.append(_range_hash(lo, hi, node))  # [lo, old_size) is complete here: one read
    proof.reverse()
    return proof


class AppendedLeaves:
    """Inclusion proofs for the leaves just appended to a log, from memory alone.

    A log's writer keeps only its *frontier*: the hashes of the complete subtrees that the binary
    decomposition of its size splits it into, largest first. Given the frontier before an append
    and the appended leaf hashes, every proof of an appended leaf against the new size can be
    built: its left siblings that lie wholly before the append are frontier subtrees, and
    everything else is hashed from the new leaves (each complete subtree at most once)."""

    __slots__ = ("_memo", "frontier", "leaves", "old_size", "size")

    def __init__(self, old_size: int, frontier: Sequence[bytes], leaves: Sequence[bytes]) -> None:
        _require_size("old_size", old_size)
        if len(frontier) != old_size.bit_count():
            raise ValueError(f"a tree of {old_size} has {old_size.bit_count()} frontier hashes")
        self.old_size, self.frontier, self.leaves = old_size, list(frontier), list(leaves)
        self.size = old_size + len(self.leaves)
        self._memo: dict[tuple[int, int], bytes] = {}

    def node(self, level: int, index: int) -> bytes:
        """A :data:`NodeReader` over the grown tree, for the subtrees its proofs can ask for."""
        key = (level, index)
        found = self._memo.get(key)
        if found is not None:
            return found
        start, old = index << level, self.old_size
        if start + (1 << level) <= old:  # wholly before the append: must be a frontier subtree
            if not (old >> level & 1 and index == (old >> level) - 1):
                raise LookupError(f"subtree ({level}, {index}) is not on the old frontier")
            h = self.frontier[(old >> (level + 1)).bit_count()]
        elif start + (1 << level) > self.size:
            raise LookupError(f"subtree ({level}, {index}) is not complete")
        elif level == 0:
            h = self.leaves[start - old]
        else:
            h = node_hash(self.node(level - 1, 2 * index), self.node(level - 1, 2 * index + 1))
        self._memo[key] = h
        return h

    def inclusion_proof(self, index: int) -> list[bytes]:
        """PATH(index, D[0:size]) for an appended leaf (``old_size <= index < size``)."""
        if not self.old_size <= index < self.size:
            raise ValueError(f"leaf {index} was not appended ({self.old_size}..{self.size})")
        return inclusion_proof_from_nodes(index, self.size, self.node)


# --- list-based: the same algorithms over levels computed once -----------------------------------


def _reader(entries: Sequence[bytes]) -> NodeReader:
    """A NodeReader over every complete subtree of ``entries``, each level hashed exactly once."""
    level = [leaf_hash(entry) for entry in entries]
    levels = [level]
    while len(level) > 1:  # an odd last hash has no complete parent; it is folded on demand
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        levels.append(level)

    def node(lvl: int, index: int) -> bytes:
        return levels[lvl][index]

    return node


def root(entries: Sequence[bytes]) -> bytes:
    """MTH of the raw ``entries`` (RFC 9162 section 2.1.1); SHA-256(b"") for no entries."""
    return root_from_nodes(len(entries), _reader(entries))


def inclusion_proof(entries: Sequence[bytes], index: int) -> list[bytes]:
    """Inclusion proof of ``entries[index]`` in the tree of all ``entries``."""
    return inclusion_proof_from_nodes(index, len(entries), _reader(entries))


def consistency_proof(entries: Sequence[bytes], old_size: int) -> list[bytes]:
    """Proof that the tree of ``entries[:old_size]`` is a prefix of the tree of ``entries``."""
    return consistency_proof_from_nodes(old_size, len(entries), _reader(entries))


# --- verification: never raises, any malformed input is simply not a valid proof -----------------


def _is_hash(value: object) -> TypeGuard[bytes]:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _is_size(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _hash_list(proof: object, max_len: int) -> list[bytes] | None:
    """``proof`` as a list of 32-byte hashes, or None if it is not one or is too long.

    ``max_len`` only rejects early what the RFC loops reject anyway (each step at least halves
    ``sn``), so an oversized proof costs nothing to refuse.
    """
    if not isinstance(proof, Sequence) or isinstance(proof, str | bytes | bytearray):
        return None  # a string is a sequence, but never a list of hashes
    if len(proof) > max_len:
        return None
    items = list(proof)
    return items if all(_is_hash(item) for item in items) else None


def verify_inclusion(
    entry: object, index: object, size: object, proof: object, root: object
) -> bool:
    """True iff ``proof`` (32-byte hashes) shows ``entry`` (bytes) at ``index`` in the tree of
    ``size`` with ``root``.

    RFC 9162 section 2.1.3.2, step by step, after type and length checks on every argument: what
    a receipt brings is untrusted, so anything else is answered False, never an exception.
    """
    if not (isinstance(entry, bytes) and _is_size(index) and _is_size(size) and _is_hash(root)):
        return False
    if index >= size:  # step 1
        return False
    path = _hash_list(proof, (size - 1).bit_length())
    if path is None:
        return False
    fn, sn, r = index, size - 1, leaf_hash(entry)  # steps 2 and 3
    for p in path:  # step 4
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root  # step 5


def verify_consistency(
    old_size: object, new_size: object, old_root: object, new_root: object, proof: object
) -> bool:
    """True iff ``proof`` shows the tree (old_size, old_root) is a prefix of (new_size, new_root).

    RFC 9162 section 2.1.4.2 covers 0 < old_size < new_size; the edge cases follow
    transparency-dev/merkle ``proof.VerifyConsistency``. Equal sizes need the empty proof (the
    RFC's SUBPROOF(m, D[m], true) = {}) and equal roots. ``old_size == 0`` is never consistent,
    whatever the proof and even for 0 -> 0: the RFC leaves it undefined, and transparency-dev
    rejects it since PR #140 (size2 > 0) and PR #236 (size2 == 0), because the empty tree's hash
    is no node of a larger tree, so there is nothing to prove. A client with no earlier tree head
    has to accept its first one on its own terms, outside this function.
    """
    if not (_is_size(old_size) and _is_size(new_size)):
        return False
    if not (_is_hash(old_root) and _is_hash(new_root)):
        return False
    if old_size == 0 or old_size > new_size:
        return False
    path = _hash_list(proof, (new_size - 1).bit_length() + 1)
    if path is None:
        return False
    if old_size == new_size:
        return not path and old_root == new_root
    return _verify_consistency_path(old_size, new_size, old_root, new_root, path)


def _verify_consistency_path(
    first: int, second: int, first_hash: bytes, second_hash: bytes, path: list[bytes]
) -> bool:
    """RFC 9162 section 2.1.4.2 steps 1-7 verbatim, for 0 < first < second."""
    if not 0 < first < second:  # the RFC's precondition; first == 0 would never leave step 4
        return False
    if not path:  # step 1
        return False
    if first & (first - 1) == 0:  # step 2: first is a power of two, its root is the seed
        path = [first_hash, *path]
    fn, sn = first - 1, second - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_hash and sr == second_hash and sn == 0  # step 7
