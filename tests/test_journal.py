"""The writer's Merkle log and tiles agree with the RFC 9162 reference functions."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from ledger import checkpoint, entry, merkle
from ledger.journal import TILE_WIDTH, MerkleLog, tile_node_reader


def leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(i.to_bytes(8, "big")) for i in range(n)]


def entries(n: int) -> list[bytes]:
    return [i.to_bytes(8, "big") for i in range(n)]


def tiles_after(chunks: list[int]) -> tuple[MerkleLog, dict[tuple[int, int], bytes]]:
    """Append leaves in the given chunk sizes, keeping every tile written (as the store does)."""
    log, tiles = MerkleLog(), {}
    start = 0
    for size in chunks:
        log.append(leaves(start + size)[start:])
        start += size
        for level, idx, data in log.take_dirty_tiles():
            tiles[(level, idx)] = data
    return log, tiles


@given(st.lists(st.integers(1, 300), min_size=1, max_size=12))
@settings(max_examples=60, deadline=None)
def test_incremental_root_equals_reference(chunks: list[int]) -> None:
    log = MerkleLog()
    total = 0
    for size in chunks:
        log.append(leaves(total + size)[total:])
        total += size
        assert log.root() == merkle.root(entries(total))


def test_empty_root_is_hash_of_nothing() -> None:
    assert MerkleLog().root() == hashlib.sha256(b"").digest() == merkle.root([])


@given(st.lists(st.integers(1, 700), min_size=1, max_size=6))
@settings(max_examples=25, deadline=None)
def test_proofs_from_tiles_verify(chunks: list[int]) -> None:
    log, tiles = tiles_after(chunks)
    size = log.size
    node = tile_node_reader(lambda level, idx: tiles[(level, idx)])
    root = log.root()
    assert merkle.root_from_nodes(size, node) == root
    for index in {0, size // 2, size - 1}:
        proof = merkle.inclusion_proof_from_nodes(index, size, node)
        assert merkle.verify_inclusion(index.to_bytes(8, "big"), index, size, proof, root)
    for old in {1, size // 3, size - 1}:
        if old >= 1:
            proof = merkle.consistency_proof_from_nodes(old, size, node)
            old_root = merkle.root(entries(old))
            assert merkle.verify_consistency(old, size, old_root, root, proof)


def test_second_tile_level_and_restore() -> None:
    """Past 65,536 leaves the level-1 tiles fill; a restored log continues identically."""
    n = TILE_WIDTH * TILE_WIDTH + 300
    log, tiles = tiles_after([5000] * (n // 5000) + [n % 5000])
    assert (1, 0) in tiles and len(tiles[(1, 0)]) == TILE_WIDTH * 32, "a complete level-1 tile"
    assert (1, 1) in tiles and len(tiles[(1, 1)]) == 32, "and the next one started"
    node = tile_node_reader(lambda level, idx: tiles[(level, idx)])
    last = {level: tiles[(level, idx)] for (level, idx) in sorted(tiles)}
    restored = MerkleLog.restore(n, node, last)
    assert restored.root() == log.root()
    more = [merkle.leaf_hash(b"next-%d" % i) for i in range(1000)]
    log.append(more)
    restored.append(more)
    assert restored.root() == log.root()
    assert restored.take_dirty_tiles() == log.take_dirty_tiles()


def test_tile_reader_refuses_a_node_the_tile_lacks() -> None:
    _, tiles = tiles_after([10])
    node = tile_node_reader(lambda level, idx: tiles[(level, idx)])
    try:
        node(4, 0)  # needs 16 leaves; only 10 exist
    except LookupError as exc:
        assert "lacks" in str(exc)
    else:
        raise AssertionError("a missing node must not be invented")


def test_checkpoint_sign_verify_and_note_round_trip() -> None:
    key = SigningKey(b"\x01" * 32)
    public = bytes(key.verify_key)
    signed = checkpoint.sign(key, "example.org/ledger", 42, b"\x11" * 32, 123)
    assert signed.verify(public)
    parsed = checkpoint.parse_note(signed.note(public), public)
    assert parsed == signed and parsed.verify(public)
    forged = checkpoint.Checkpoint("example.org/ledger", 43, b"\x11" * 32, 123, signed.signature)
    assert not forged.verify(public)
    other = SigningKey(b"\x02" * 32)
    assert not signed.verify(bytes(other.verify_key))
    note = signed.note(public)
    assert note.splitlines()[:4] == [
        "example.org/ledger",
        "42",
        "ERERERERERERERERERERERERERERERERERERERERERE=",
        "time 123",
    ]


def test_checkpoint_key_id_follows_signed_note() -> None:
    """key id = SHA-256(name || "\\n" || 0x01 || public key)[:4] (c2sp.org/signed-note)."""
    public = bytes(SigningKey(b"\x01" * 32).verify_key)
    want = hashlib.sha256(b"example.org/ledger\n\x01" + public).digest()[:4]
    assert checkpoint.key_id("example.org/ledger", public) == want


def test_entry_round_trip_and_canonical_only() -> None:
    t = entry.TransferEntry(5, 1, 2, 3, 0, 100, 156, 1, 0, 0, b'{"a":"b"}', b"sig")
    body = entry.encode(t)
    assert entry.decode(body) == t
    for bad in (body + b"\x00", body[:-1], b"\x02" + body[1:], body[:1] + b"\x09" + body[2:]):
        try:
            entry.decode(bad)
        except entry.EntryError:
            continue
        raise AssertionError(f"accepted non-canonical bytes {bad!r}")
    a = entry.AccountCreated(7, 2**128 - 2, 156, 3, 1, "owner-ref", "op_icbc")
    assert entry.decode(entry.encode(a)) == a
    assert entry.decode(entry.encode(entry.AccountClosed(9, 4))) == entry.AccountClosed(9, 4)
    x = entry.PendingExpired(9, 4, 1, 2, 50, 156, 1)
    assert entry.decode(entry.encode(x)) == x


@given(st.binary(max_size=200))
def test_entry_decoder_never_crashes_on_garbage(data: bytes) -> None:
    try:
        decoded = entry.decode(data)
    except entry.EntryError:
        return
    assert entry.encode(decoded) == data
