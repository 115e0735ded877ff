"""The ledger's Ed25519 signing key: created on first start in a file only its owner can read."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

from nacl.signing import SigningKey

_HEADER = "ed25519-seed "


class KeyFileError(RuntimeError):
    """The key file is unsafe or unreadable; the message says what to do."""


def load_or_create(path: Path) -> SigningKey:
    """Load the signing key at ``path``; create it (mode 0600) if there is none."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = SigningKey.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(_HEADER + base64.b64encode(bytes(key)).decode() + "\n")
        return key
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path} is readable by others (mode {stat.filemode(mode)}); run: chmod 600 {path}"
        )
    text = path.read_text().strip()
    if not text.startswith(_HEADER):
        raise KeyFileError(f"{path} is not a ledger key file")
    try:
        seed = base64.b64decode(text[len(_HEADER) :], validate=True)
        return SigningKey(seed)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} holds a damaged key: {exc}") from exc
