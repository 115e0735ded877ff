"""Signed checkpoints: the ledger's Ed25519 signature over (origin, tree size, root, time).

Pure and shared with ``wallet_sdk``. The text is a C2SP ``tlog-checkpoint`` signed note, the
format transparency logs use (https://c2sp.org/tlog-checkpoint, https://c2sp.org/signed-note)::

    <origin>
    <tree size>
    <base64 root hash>
    time <unix ns>

    — <origin> <base64(key id || signature)>

The signature covers every line above the blank line, newline included. The key id is the first
four bytes of SHA-256(origin || "\\n" || 0x01 || public key), as signed-note defines for Ed25519.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

ED25519_ALGORITHM = 0x01


class CheckpointError(ValueError):
    """Text that is not a well-formed signed checkpoint."""


def key_id(origin: str, public_key: bytes) -> bytes:
    return hashlib.sha256(
        origin.encode() + b"\n" + bytes([ED25519_ALGORITHM]) + public_key
    ).digest()[:4]


def body(origin: str, size: int, root: bytes, timestamp: int) -> bytes:
    """The signed bytes of a checkpoint."""
    if "\n" in origin or not origin:
        raise CheckpointError("origin must be one non-empty line")
    root_b64 = base64.b64encode(root).decode()
    return f"{origin}\n{size}\n{root_b64}\ntime {timestamp}\n".encode()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    timestamp: int
    signature: bytes

    def __reduce__(self) -> tuple[type[Checkpoint], tuple[str, int, bytes, int, bytes]]:
        # a slotted dataclass pickles through fields() each time; receipts cross the link a lot
        return Checkpoint, (self.origin, self.size, self.root, self.timestamp, self.signature)

    def note(self, public_key: bytes) -> str:
        """The checkpoint as a signed note (text a transparency-log client can read)."""
        sig = base64.b64encode(key_id(self.origin, public_key) + self.signature).decode()
        text = body(self.origin, self.size, self.root, self.timestamp).decode()
        return f"{text}\n\u2014 {self.origin} {sig}\n"

    def verify(self, public_key: bytes) -> bool:
        """True when the signature is the ledger key's over this checkpoint. Never raises."""
        try:
            signed = body(self.origin, self.size, self.root, self.timestamp)
            VerifyKey(public_key).verify(signed, self.signature)
        except (BadSignatureError, CheckpointError, ValueError, TypeError):
            return False
        return True


def sign(key: SigningKey, origin: str, size: int, root: bytes, timestamp: int) -> Checkpoint:
    signature = key.sign(body(origin, size, root, timestamp)).signature
    return Checkpoint(origin, size, root, timestamp, signature)


def parse_note(text: str, public_key: bytes) -> Checkpoint:
    """Read a signed-note checkpoint whose signature line carries ``public_key``'s id.

    Checks the form and the key id, not the signature: call ``verify`` for that."""
    try:
        signed, _, signatures = text.partition("\n\n")
        origin, size_s, root_b64, time_line = signed.split("\n")
        if not time_line.startswith("time "):
            raise CheckpointError("missing time line")
        size, timestamp = int(size_s), int(time_line[5:])
        root = base64.b64decode(root_b64, validate=True)
        want = key_id(origin, public_key)
        for line in signatures.splitlines():
            dash, name, sig_b64 = line.split(" ")
            raw = base64.b64decode(sig_b64, validate=True)
            if dash == "\u2014" and name == origin and raw[:4] == want and len(raw) == 68:
                return Checkpoint(origin, size, root, timestamp, raw[4:])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"malformed checkpoint: {exc}") from exc
    raise CheckpointError("no signature by this ledger's key")
