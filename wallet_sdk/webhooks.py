"""Standard Webhooks signing and verification: one implementation for our server and merchants.

The merchant API sends every webhook as an HTTP POST whose body is the event (JSON) and whose
headers follow the Standard Webhooks specification (https://www.standardwebhooks.com, spec at
github.com/standard-webhooks/standard-webhooks ``spec/standard-webhooks.md``, symmetric scheme):

* ``webhook-id``: the message id, also the idempotency key (store it and drop repeats);
* ``webhook-timestamp``: integer unix seconds of this delivery attempt;
* ``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256>`` entries, one per secret,
  so a secret can be rotated without downtime (sign with old and new during the overlap).

The signed content is ``f"{msg_id}.{timestamp}.".encode() + body``, keyed with the bytes the
secret encodes (the base64 after the ``whsec_`` prefix). Our server calls :func:`sign` /
:func:`signature_header`; merchants call :func:`verify` with the **raw request body bytes**.
Keeping both sides in this one module means they cannot drift apart.

Pure standard library (hmac, hashlib, base64, json, secrets) so merchants can vendor it.
Every failure raises :class:`WebhookVerificationError` with a message saying what failed; no
message ever contains the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence

__all__ = [
    "SECRET_PREFIX",
    "WebhookVerificationError",
    "generate_secret",
    "sign",
    "signature_header",
    "verify",
]

SECRET_PREFIX = "whsec_"
"""Prefix of serialised secrets, so a secret is recognisable wherever it is pasted (the spec)."""

SIGNATURE_VERSION = "v1"
"""Version tag of symmetric HMAC-SHA256 signatures; entries with other tags are ignored."""

DEFAULT_TOLERANCE_S = 300
"""Allowed clock difference, both directions, as in the reference libraries (5 minutes)."""

_SECRET_BYTES = 32  # generate_secret: 256 bits, inside the spec's 24..64-byte range
_MIN_SECRET_BYTES = 24  # the spec: "Random. At least 24 bytes (192 bits...)"
_MAX_TIMESTAMP_DIGITS = 15  # unix seconds fit in 11 digits until year 5138; caps parsing work
_TIMESTAMP_RE = re.compile(r"[0-9]{1,15}")  # ASCII digits only: no sign, no ".5", no "1e9"
_MSG_ID_RE = re.compile(r"[\x21-\x2d\x2f-\x7e]+")  # visible ASCII except "."

# Header names, tried as a set: the Standard Webhooks names, then Svix's branded aliases. The
# Standard Webhooks reference libraries read only ``webhook-*``; the Svix library they derive
# from (svix/svix-webhooks ``python/svix/webhooks.py``) reads ``svix-id``/``svix-timestamp``/
# ``svix-signature`` and falls back to ``webhook-*``. We accept both, preferring ``webhook-*``.
_HEADER_SETS: tuple[tuple[str, str, str], ...] = (
    ("webhook-id", "webhook-timestamp", "webhook-signature"),
    ("svix-id", "svix-timestamp", "svix-signature"),
)

_RAW_BODY_ADVICE = (
    "pass the raw request body bytes exactly as received (e.g. `await request.body()` in "
    "FastAPI/Starlette, `request.get_data()` in Flask, `request.body` in Django): the signature "
    "covers those exact bytes, and a decoded string or re-serialised JSON will not match"
)

_RESERIALISED_HINT = (
    "the body may have been re-serialised (e.g. parsed and dumped again by a framework); "
    "verify the raw request body bytes"
)


class WebhookVerificationError(Exception):
    """Any failure to sign or verify a webhook; the message says what failed and what to do.

    One type so that a receiver needs exactly one ``except`` to answer 400 and drop the request.
    """


def generate_secret() -> str:
    """A new endpoint secret: ``"whsec_"`` + base64 of 32 random bytes from :mod:`secrets`.

    Generate one per merchant endpoint (the spec: never share secrets between endpoints) and
    show it to the merchant once; store it as given, it is what :func:`sign` and :func:`verify`
    take.
    """
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(_SECRET_BYTES)).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, payload: bytes) -> str:
    """The ``"v1,<base64 HMAC-SHA256>"`` signature of one delivery attempt.

    Signs ``f"{msg_id}.{timestamp}.".encode() + payload`` with the key ``secret`` encodes. The
    id must be visible ASCII without ``"."`` (the spec asks for ids without dots, so that id,
    timestamp and body cannot be re-split into a different message with the same signed
    bytes), and the timestamp a non-negative int of unix seconds (the attempt's time, not the
    event's).
    """
    key = _decode_secret(secret)
    if not isinstance(msg_id, str) or not _MSG_ID_RE.fullmatch(msg_id):
        raise WebhookVerificationError(
            "cannot sign: msg_id must be a non-empty string of visible ASCII characters "
            "without '.' (it travels in the webhook-id header and is delimited by '.')"
        )
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise WebhookVerificationError(
            "cannot sign: timestamp must be a non-negative int of unix seconds"
        )
    if len(str(timestamp)) > _MAX_TIMESTAMP_DIGITS:
        raise WebhookVerificationError("cannot sign: timestamp is implausibly large")
    body = _raw_body(payload, action="sign")
    return _signature(key, msg_id, timestamp, body)


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, payload: bytes) -> str:
    """The ``webhook-signature`` header value: one ``v1,...`` entry per secret, space-separated.

    During a secret rotation pass both the old and the new secret; a receiver still holding the
    old one and a receiver already holding the new one both verify, so rotation needs no
    coordinated switch-over. Identical secrets give one entry, order is kept.
    """
    if isinstance(secrets, str | bytes):
        raise WebhookVerificationError(
            "cannot sign: secrets must be a sequence of secrets (e.g. [old, new]), not one string"
        )
    if len(secrets) == 0:
        raise WebhookVerificationError("cannot sign: at least one secret is needed")
    entries: list[str] = []
    for secret in secrets:
        entry = sign(secret, msg_id, timestamp, payload)
        if entry not in entries:
            entries.append(entry)
    return " ".join(entries)


def verify(
    payload: bytes,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> dict[str, object]:
    """Check a received webhook and return its event (the body parsed as a JSON object).

    ``payload`` must be the raw body bytes; ``headers`` any mapping of the request headers
    (names are matched case-insensitively; ``webhook-*``, or Svix's ``svix-*`` aliases when no
    ``webhook-*`` header is present). ``now`` (unix seconds) is for tests; it defaults to the
    clock. Checks, in order: the body is bytes, the secret decodes, the three headers are there,
    the timestamp is within ``tolerance_s`` of now (replay protection), some ``v1`` entry of the
    signature header matches (constant-time), the body is a JSON object. Only then is the event
    returned; anything else raises :class:`WebhookVerificationError`.

    Still deduplicate on ``webhook-id``: a valid webhook may be delivered more than once.
    """
    body = _raw_body(payload, action="verify")
    key = _decode_secret(secret)
    if isinstance(tolerance_s, bool) or not isinstance(tolerance_s, int) or tolerance_s < 0:
        raise WebhookVerificationError("tolerance_s must be a non-negative int of seconds")

    msg_id, timestamp_text, signature_text, names = _read_headers(headers)
    id_name, ts_name, sig_name = names
    if "." in msg_id:
        raise WebhookVerificationError(
            f"invalid {id_name} header: it must not contain '.' (the signed content is "
            "'id.timestamp.body', so a dot would make it ambiguous)"
        )
    if not _TIMESTAMP_RE.fullmatch(timestamp_text):
        raise WebhookVerificationError(
            f"invalid {ts_name} header: expected integer unix seconds, got {timestamp_text!r:.40}"
        )
    timestamp = int(timestamp_text)
    current = time.time() if now is None else float(now)
    if not math.isfinite(current):  # NaN would make both tolerance comparisons False
        raise WebhookVerificationError("now must be a finite number of unix seconds")
    if current - timestamp > tolerance_s:
        raise WebhookVerificationError(
            f"webhook timestamp too old: {_seconds(current - timestamp)} before now, tolerance is "
            f"{tolerance_s} s (a replay, a very late retry, or a wrong clock on this server)"
        )
    if timestamp - current > tolerance_s:
        raise WebhookVerificationError(
            f"webhook timestamp too new: {_seconds(timestamp - current)} after now, tolerance is "
            f"{tolerance_s} s (check this server's clock)"
        )

    candidates, other_versions = _parse_signatures(signature_text)
    if not candidates:
        found = f" (found only: {', '.join(sorted(other_versions))})" if other_versions else ""
        raise WebhookVerificationError(
            f"no {SIGNATURE_VERSION} signature in the {sig_name} header{found}; expected "
            f"space-separated '{SIGNATURE_VERSION},<base64>' entries"
        )
    expected = _signature(key, msg_id, timestamp, body).partition(",")[2].encode("ascii")
    matched = False
    for candidate in candidates:  # every entry is compared; each comparison is constant-time
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        message = (
            f"no matching signature: none of the {len(candidates)} {SIGNATURE_VERSION} "
            f"signature(s) in {sig_name} matches this secret, {id_name}, {ts_name} and body "
            "(wrong secret, or the body or headers were altered)"
        )
        if _looks_reserialised(body):
            message += "; " + _RESERIALISED_HINT
        raise WebhookVerificationError(message)

    try:
        event = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise WebhookVerificationError(
            f"the signature is valid but the body is not JSON ({type(exc).__name__})"
        ) from None
    if not isinstance(event, dict):
        raise WebhookVerificationError(
            f"the signature is valid but the body is JSON {type(event).__name__}, not an object"
        )
    return event


def _seconds(value: float) -> str:
    """A duration for an error message: whole seconds as ``301 s``, fractions as ``300.5 s``."""
    return f"{value:.0f} s" if value == int(value) else f"{value:.1f} s"


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64>`` of HMAC-SHA256(key, "id.timestamp." + body); the one place that signs."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def _decode_secret(secret: str) -> bytes:
    """The HMAC key a secret encodes: standard base64 after an optional ``whsec_`` prefix.

    Like the reference libraries, a secret without the prefix is accepted. Decoding is strict
    (``validate=True``): a secret with stray characters is a copy-paste error to report, not
    something to half-decode into a different key. Surrounding whitespace is dropped. A key
    shorter than the spec's 24 bytes is refused: it is almost certainly truncated.
    """
    if not isinstance(secret, str):
        raise WebhookVerificationError(
            f"the webhook secret must be a str ('{SECRET_PREFIX}...'), got {type(secret).__name__}"
        )
    text = secret.strip()
    text = text.removeprefix(SECRET_PREFIX)
    if not text:
        raise WebhookVerificationError("the webhook secret is empty")
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError(
            f"the webhook secret is malformed: expected '{SECRET_PREFIX}' followed by standard "
            "base64 (A-Z a-z 0-9 + / and '=' padding); copy it again from the merchant dashboard"
        ) from None
    if len(key) < _MIN_SECRET_BYTES:
        raise WebhookVerificationError(
            f"the webhook secret decodes to {len(key)} bytes, fewer than the "
            f"{_MIN_SECRET_BYTES} Standard Webhooks requires; it looks truncated"
        )
    return key


def _raw_body(payload: object, *, action: str) -> bytes:
    """``payload`` as bytes, or an error telling the developer to pass the raw body bytes.

    A ``str`` is refused rather than encoded: it is usually ``body.decode()`` or, worse,
    ``json.dumps(parsed)``, and silently encoding it would turn an actionable mistake into a
    confusing signature mismatch. Parsed JSON (dict, list) is refused for the same reason.
    """
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    if isinstance(payload, str):
        got = "a str"
    elif isinstance(payload, dict | list):
        got = f"parsed JSON ({type(payload).__name__})"
    else:
        got = type(payload).__name__
    raise WebhookVerificationError(f"cannot {action}: payload is {got}; {_RAW_BODY_ADVICE}")


def _read_headers(headers: Mapping[str, str]) -> tuple[str, str, str, tuple[str, str, str]]:
    """The id, timestamp and signature header values, and the names they were read under.

    Names are matched case-insensitively. The ``webhook-*`` set is used when any of its headers
    is present, else the ``svix-*`` set when any of those is; a missing header is named in the
    error. Two different values under one name (e.g. ``Webhook-Id`` and ``webhook-id``, or a
    repeated header) are refused: which one was signed would be a guess.
    """
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise WebhookVerificationError("header names and values must be str")
        key = name.strip().lower()
        value = value.strip()  # optional whitespace around a field value is not part of it
        if key in lowered and lowered[key] != value:
            raise WebhookVerificationError(f"conflicting values for the {key} header")
        lowered[key] = value
    names = next(
        (names for names in _HEADER_SETS if any(n in lowered for n in names)), _HEADER_SETS[0]
    )
    values = []
    for name in names:
        value = lowered.get(name, "")
        if not value:
            raise WebhookVerificationError(f"missing required header {name!r}")
        values.append(value)
    return values[0], values[1], values[2], names


def _parse_signatures(header: str) -> tuple[list[bytes], set[str]]:
    """The ``v1`` signatures in a signature header, and the other version tags seen.

    Entries are whitespace-separated ``version,signature`` pairs; entries of other versions
    (``v1a`` asymmetric, future ones) and entries without a comma are skipped, as the spec and
    the reference libraries do.
    """
    candidates: list[bytes] = []
    others: set[str] = set()
    for entry in header.split():
        version, comma, value = entry.partition(",")
        if not comma:
            continue
        if version == SIGNATURE_VERSION:
            candidates.append(value.encode("utf-8"))
        else:
            others.add(version[:16])
    return candidates, others


def _looks_reserialised(body: bytes) -> bool:
    """Whether a body that failed verification looks like JSON that was parsed and dumped again.

    We never see the original bytes, so this can only be a hint, and it is computed only after
    the signature has already failed: it adds words to the error and cannot make verification
    pass. The rule: the body parses as a JSON object or array, and it is *not* in the compact
    form our server sends (``json.dumps(value, separators=(",", ":"))``, with or without
    ``ensure_ascii``), i.e. it differs from its own compact re-encoding in insignificant
    whitespace, escaping or number spelling. That is the fingerprint of the common mistakes:
    Python's default ``json.dumps`` (``", "`` and ``": "``), pretty-printing with ``indent``,
    ``sort_keys`` re-dumps that add spaces. A compact body is not flagged, so a plain wrong
    secret on a compact body gives no misleading hint. Not caught: a re-serialisation that
    happens to be compact again (e.g. ``JSON.stringify`` reordering nothing but changing
    ``1.0`` to ``1``), which is indistinguishable from the original without the original.
    """
    if not body.lstrip(b" \t\r\n").startswith((b"{", b"[")):
        return False
    try:
        value = json.loads(body)
        compact = {
            json.dumps(value, separators=(",", ":"), ensure_ascii=ascii_only).encode()
            for ascii_only in (True, False)
        }
    except (ValueError, RecursionError):
        return False
    return body not in compact
