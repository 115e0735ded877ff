"""Check the ledger's evidence offline: receipts, and that its history never changes.

A receipt is ``{"entry", "leaf_index", "tree_size", "inclusion_proof", "checkpoint"}``: the
journal entry's canonical bytes, the RFC 9162 proof that it is leaf ``leaf_index`` of the tree
of ``tree_size`` entries, and the checkpoint (tree size, root, time) the ledger signed with its
Ed25519 key. :func:`verify_receipt` needs nothing but that key: no network, no trust in whoever
handed you the receipt. The checks are the server's own code (``ledger.entry``,
``ledger.merkle``, ``ledger.checkpoint``): one truth.

A valid receipt proves the entry is in *a* tree the ledger signed. That the ledger shows every
client the *same* tree is what :class:`CheckpointTracker` checks: it remembers the last
checkpoint seen per ledger and demands a consistency proof (RFC 9162 2.1.4) for each new one,
raising :class:`ForkDetected` when the ledger's history was rewritten.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Final

from ledger import entry as entries
from ledger import merkle
from ledger.checkpoint import Checkpoint, CheckpointError, parse_note
from wallet_sdk._errors import ForkDetected, ReceiptVerificationError, VerificationError

__all__ = [
    "CheckpointTracker",
    "check_receipt",
    "parse_checkpoint",
    "public_key_bytes",
    "verify_receipt",
]

PUBLIC_KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
PROOF_LEN_MAX: Final = 130
"""No RFC 9162 proof over a tree of at most 2**64 entries is longer; a longer one is refused
before any hashing."""
_EMPTY_ROOT: Final = hashlib.sha256(b"").digest()


def public_key_bytes(key: bytes | str) -> bytes:
    """A ledger public key as raw bytes: 32 raw bytes, or their base64 (as GET /v1/public_key
    gives it). ``ValueError`` otherwise."""
    if isinstance(key, str):
        try:
            key = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the ledger public key is not valid base64") from None
    if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"a ledger public key is {PUBLIC_KEY_SIZE} bytes (Ed25519)")
    return key


def _b64(value: object, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise ReceiptVerificationError(f"{what} is not a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ReceiptVerificationError(f"{what} is not valid base64") from None
    if size is not None and len(raw) != size:
        raise ReceiptVerificationError(f"{what} is {len(raw)} bytes, not {size}")
    return raw


def _size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ReceiptVerificationError(f"{what} is not a non-negative integer")
    return value


def parse_checkpoint(view: Mapping[str, Any] | Checkpoint, ledger_public_key: bytes) -> Checkpoint:
    """A checkpoint as the API shows it (``origin, tree_size, root_hash, timestamp, signature,
    note``), checked: well formed, signed by ``ledger_public_key``, and its signed note saying
    the same as its fields. Raises :class:`ReceiptVerificationError` otherwise."""
    if isinstance(view, Checkpoint):
        checkpoint = view
    else:
        if not isinstance(view, Mapping):
            raise ReceiptVerificationError("the checkpoint is not an object")
        origin = view.get("origin")
        if not isinstance(origin, str) or not origin or "\n" in origin:
            raise ReceiptVerificationError("the checkpoint's origin is not one line of text")
        checkpoint = Checkpoint(
            origin,
            _size(view.get("tree_size"), "checkpoint tree_size"),
            _b64(view.get("root_hash"), "checkpoint root_hash", merkle.HASH_SIZE),
            _size(view.get("timestamp"), "checkpoint timestamp"),
            _b64(view.get("signature"), "checkpoint signature", SIGNATURE_SIZE),
        )
        note = view.get("note")
        if note is not None:
            try:
                from_note = parse_note(note, ledger_public_key) if isinstance(note, str) else None
            except CheckpointError as exc:
                raise ReceiptVerificationError(f"the checkpoint's note: {exc}") from None
            if from_note != checkpoint:
                raise ReceiptVerificationError("the checkpoint's note and fields disagree")
    if not checkpoint.verify(ledger_public_key):
        raise ReceiptVerificationError("the checkpoint is not signed by this ledger's key")
    return checkpoint


def check_receipt(
    receipt: Mapping[str, Any],
    ledger_public_key: bytes | str,
    *,
    transfer_id: int | None = None,
) -> entries.Entry:
    """Verify a receipt offline and return its decoded entry, or raise
    :class:`ReceiptVerificationError` saying which check failed.

    Checks: the entry is canonical bytes; ``tree_size`` is the checkpoint's and
    ``leaf_index < tree_size``; the inclusion proof leads from the entry's leaf hash (and the
    receipt's ``leaf_hash``, if it has one) to the checkpoint's root; the checkpoint is signed
    by the ledger's key. With ``transfer_id``, also that the entry is that transfer.
    """
    try:
        key = public_key_bytes(ledger_public_key)
    except (ValueError, TypeError) as exc:
        raise ReceiptVerificationError(str(exc)) from None
    if not isinstance(receipt, Mapping):
        raise ReceiptVerificationError("the receipt is not an object")
    body = _b64(receipt.get("entry"), "entry")
    try:
        decoded = entries.decode(body)
    except (ValueError, TypeError, KeyError) as exc:
        raise ReceiptVerificationError(f"the entry is not canonical: {exc}") from None
    leaf_index = _size(receipt.get("leaf_index"), "leaf_index")
    tree_size = _size(receipt.get("tree_size"), "tree_size")
    checkpoint = parse_checkpoint(_mapping(receipt.get("checkpoint")), key)
    if tree_size != checkpoint.size:
        raise ReceiptVerificationError(
            f"the receipt says tree_size {tree_size}, its checkpoint {checkpoint.size}"
        )
    if leaf_index >= tree_size:
        raise ReceiptVerificationError(f"leaf_index {leaf_index} is not below {tree_size}")
    if "leaf_hash" in receipt and _b64(receipt["leaf_hash"], "leaf_hash") != merkle.leaf_hash(body):
        raise ReceiptVerificationError("leaf_hash is not the entry's hash")
    proof = receipt.get("inclusion_proof")
    if not isinstance(proof, list) or len(proof) > PROOF_LEN_MAX:
        raise ReceiptVerificationError("inclusion_proof is not a list of hashes")
    path = [_b64(h, "inclusion_proof element", merkle.HASH_SIZE) for h in proof]
    if not merkle.verify_inclusion(body, leaf_index, tree_size, path, checkpoint.root):
        raise ReceiptVerificationError("the inclusion proof does not lead to the signed root")
    if transfer_id is not None and getattr(decoded, "id", None) != transfer_id:
        raise ReceiptVerificationError("the receipt is for another entry")
    return decoded


def _mapping(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ReceiptVerificationError("the checkpoint is not an object")
    return value


def verify_receipt(
    receipt: Mapping[str, Any],
    ledger_public_key: bytes | str,
    *,
    transfer_id: int | None = None,
) -> bool:
    """True iff the receipt checks out offline against the ledger's public key (see
    :func:`check_receipt`). Never raises: anything malformed is simply not a valid receipt."""
    try:
        check_receipt(receipt, ledger_public_key, transfer_id=transfer_id)
    except (VerificationError, ValueError, TypeError, KeyError, AttributeError, OverflowError):
        return False
    return True


def _consistency_proof(proof: Any, first: int, second: int) -> list[bytes] | None:
    """The hashes of an API consistency proof ``{"first", "second", "proof": [base64]}`` if it
    is one for exactly (first, second); None otherwise."""
    if not isinstance(proof, Mapping) or (proof.get("first"), proof.get("second")) != (
        first,
        second,
    ):
        return None
    hashes = proof.get("proof")
    if not isinstance(hashes, list) or len(hashes) > PROOF_LEN_MAX:
        raise VerificationError("the consistency proof is not a list of hashes")
    try:
        return [_b64(h, "consistency proof element", merkle.HASH_SIZE) for h in hashes]
    except ReceiptVerificationError as exc:
        raise VerificationError(f"the consistency proof is malformed: {exc}") from None


class CheckpointTracker:
    """Memory of the last verified checkpoint of each ledger (by origin) signed by one key.

    Show it every checkpoint you are given (:meth:`observe`). The first one per origin is
    trusted on its signature alone (trust on first use: persist :meth:`notes` and pass them
    back to the constructor to keep that trust across restarts). Each later one must come with
    a consistency proof between it and the remembered one, in whichever order their sizes
    are; :meth:`proof_sizes` says which proof to fetch (``GET /v1/proofs/consistency?first=
    &second=``). Thread-safe.
    """

    def __init__(self, ledger_public_key: bytes | str, *, notes: Iterable[str] = ()) -> None:
        self.ledger_public_key = public_key_bytes(ledger_public_key)
        self._latest: dict[str, Checkpoint] = {}
        self._lock = threading.Lock()
        for note in notes:
            try:
                checkpoint = parse_note(note, self.ledger_public_key)
            except CheckpointError as exc:
                raise VerificationError(f"a remembered checkpoint: {exc}") from None
            self.observe(checkpoint)

    def latest(self, origin: str) -> Checkpoint | None:
        """The largest verified checkpoint of ``origin`` seen so far."""
        with self._lock:
            return self._latest.get(origin)

    def notes(self) -> list[str]:
        """Every remembered checkpoint as a signed note: what to persist between runs."""
        with self._lock:
            return [c.note(self.ledger_public_key) for c in self._latest.values()]

    def proof_sizes(self, checkpoint: Checkpoint) -> tuple[int, int] | None:
        """(first, second) of the consistency proof :meth:`observe` needs for ``checkpoint``
        now, or None when it needs none (a first sighting, the same size, an empty tree)."""
        with self._lock:
            return self._sizes(checkpoint)

    def _sizes(self, checkpoint: Checkpoint) -> tuple[int, int] | None:
        known = self._latest.get(checkpoint.origin)
        if known is None or known.size == checkpoint.size or checkpoint.size == 0:
            return None
        return min(known.size, checkpoint.size), max(known.size, checkpoint.size)

    def observe(
        self,
        checkpoint: Checkpoint | Mapping[str, Any],
        consistency_proof: Mapping[str, Any] | None = None,
    ) -> bool:
        """Check ``checkpoint`` against memory; remember it if it is the largest so far.

        ``consistency_proof`` is the API's ``{"first", "second", "proof"}`` for the sizes
        :meth:`proof_sizes` named. Returns True when the checkpoint is consistent with memory;
        False when the proof given is not the one needed now (none, or memory moved on in the
        meantime: ask :meth:`proof_sizes` again). Raises :class:`ForkDetected` when the proof
        fails or the same size has another root, and :class:`VerificationError` when the
        checkpoint is not signed by the ledger's key.
        """
        new = parse_checkpoint(checkpoint, self.ledger_public_key)
        with self._lock:
            known = self._latest.get(new.origin)
            if known is None:
                if new.size > 0:
                    self._latest[new.origin] = new
                return True
            if new.size == 0:  # the empty tree is a prefix of every tree
                if new.root != _EMPTY_ROOT:
                    raise ForkDetected("an empty tree with a non-empty root", presented=new)
                return True
            if new.size == known.size:
                if new.root != known.root:
                    raise ForkDetected(
                        f"two different roots signed for tree size {new.size}",
                        remembered=known,
                        presented=new,
                    )
                return True
            sizes = self._sizes(new)
            assert sizes is not None
            path = _consistency_proof(consistency_proof, *sizes)
            if path is None:
                return False
            old, young = (known, new) if known.size < new.size else (new, known)
            if not merkle.verify_consistency(old.size, young.size, old.root, young.root, path):
                raise ForkDetected(
                    f"the tree of size {old.size} is not a prefix of the tree of size "
                    f"{young.size}: the ledger rewrote its history",
                    remembered=known,
                    presented=new,
                )
            if new.size > known.size:
                self._latest[new.origin] = new
            return True
