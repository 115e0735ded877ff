"""EMVCo merchant-presented QR codes (EMV QRCPS Merchant-Presented Mode v1.1): parse and encode.

Pure and stdlib only, so a wallet app that scans a code and the merchant API that prints one run
the same codec. A payload is a flat run of data objects ``ID(2 digits) LEN(2 digits) VALUE``;
some values are themselves such runs (templates). Lengths count *characters* (Unicode code
points), not UTF-8 bytes, so a Chinese merchant name of four characters has length ``04``. The
payload ends with the CRC object ``6304XXXX``: CRC-16/CCITT-FALSE over the UTF-8 bytes of
everything before ``XXXX`` (the ``6304`` included), as four hex digits.

Amounts never pass through a float: tag 54 is read and written as a decimal string and held as
integer fen (1/100 of the currency unit).
"""

from __future__ import annotations

import base64
import binascii
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

__all__ = [
    "AMOUNT_MAX_CHARS",
    "ECNY_QR_GUID",
    "MERCHANT_CITY_MAX_CHARS",
    "MERCHANT_NAME_MAX_CHARS",
    "ORDER_REFERENCE_CHARS",
    "PAYLOAD_MAX_CHARS",
    "MerchantQR",
    "QRCodeError",
    "crc16_ccitt_false",
    "ecny_order_id",
    "ecny_payee",
    "encode",
    "parse",
]

PAYLOAD_MAX_CHARS: Final = 512
"""Longest payload accepted or produced: the spec's "should not exceed 512 characters". It also
bounds the work a hostile scan can cause before anything else is looked at."""

AMOUNT_MAX_CHARS: Final = 13  # tag 54, "ans ..13" in the spec
MERCHANT_NAME_MAX_CHARS: Final = 25  # tag 59
MERCHANT_CITY_MAX_CHARS: Final = 15  # tag 60
VALUE_MAX_CHARS: Final = 99  # the two-digit length field

# Top-level tags the spec marks Mandatory, all enforced by parse() and always written by encode():
# 00 payload format indicator, 52 merchant category code, 53 transaction currency, 58 country
# code, 59 merchant name, 60 merchant city, 63 CRC, plus at least one merchant account
# information object in 02-51. Tag 01 is optional (absent means static).
_MANDATORY: Final = ("00", "52", "53", "58", "59", "60", "63")
_ACCOUNT_TEMPLATES: Final = frozenset(f"{i:02d}" for i in range(26, 52))
_UNRESERVED_TEMPLATES: Final = frozenset(f"{i:02d}" for i in range(80, 100))
_ADDITIONAL_DATA: Final = "62"
_LANGUAGE_TEMPLATE: Final = "64"
_CRC_TAG: Final = "63"
_CRC_HEADER: Final = "6304"
_POINT_OF_INITIATION: Final = {"11": "static", "12": "dynamic"}
_DIGITS: Final = frozenset("0123456789")
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")

TagTree: TypeAlias = dict[str, object]
"""Data objects by ID: a ``str`` value, or a ``dict[str, str]`` for a template."""

_Check: TypeAlias = Callable[[str], bool]


class QRCodeError(ValueError):
    """A payload that is not a valid merchant-presented QR code, or inputs that cannot make one."""


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, xorout 0), tag 63's checksum:
    the standard library's ``binascii.crc_hqx`` started at 0xFFFF (in C; a loop in Python was a
    visible share of rendering an order's QR code)."""
    return binascii.crc_hqx(data, 0xFFFF)


@dataclass(frozen=True)
class MerchantQR:
    """A parsed merchant-presented QR code: the fields a payer needs, and the whole tag tree."""

    amount_fen: int | None
    currency: str
    merchant_name: str
    merchant_city: str
    country_code: str
    point_of_initiation: str
    fields: TagTree = field(hash=False)

    def _template(self, tag: str) -> dict[str, str]:
        value = self.fields.get(tag)
        return dict(value) if isinstance(value, dict) else {}

    @property
    def merchant_category_code(self) -> str:
        """Tag 52, the ISO 18245 merchant category code."""
        return str(self.fields["52"])

    @property
    def merchant_account_information(self) -> dict[str, object]:
        """Tags 02-51: primitive card-network IDs (02-25) and account templates (26-51)."""
        return {tag: value for tag, value in self.fields.items() if "02" <= tag <= "51"}

    @property
    def additional_data(self) -> dict[str, str]:
        """Tag 62 sub-fields (empty when absent)."""
        return self._template(_ADDITIONAL_DATA)

    @property
    def language_template(self) -> dict[str, str]:
        """Tag 64 sub-fields: 00 language, 01 name and 02 city in it (empty if absent)."""
        return self._template(_LANGUAGE_TEMPLATE)

    @property
    def bill_number(self) -> str | None:
        """Tag 62/01."""
        return self.additional_data.get("01")

    @property
    def reference_label(self) -> str | None:
        """Tag 62/05, e.g. the merchant's order reference."""
        return self.additional_data.get("05")

    @property
    def terminal_label(self) -> str | None:
        """Tag 62/07."""
        return self.additional_data.get("07")


# --- parsing -------------------------------------------------------------------------------------


def _is_digits(text: str) -> bool:
    """Non-empty and ASCII 0-9 only (``str.isdigit`` would also accept e.g. fullwidth digits)."""
    return bool(text) and all(char in _DIGITS for char in text)


def _four_digits(value: str) -> bool:
    return len(value) == 4 and _is_digits(value)


def _three_digits(value: str) -> bool:
    return len(value) == 3 and _is_digits(value)


def _is_country(value: str) -> bool:
    """ISO 3166-1 alpha-2 as the spec writes it: two upper-case ASCII letters."""
    return len(value) == 2 and all("A" <= char <= "Z" for char in value)


def _split_tlv(text: str, where: str) -> list[tuple[str, str]]:
    """Split a run of data objects into (ID, value) pairs, in order; lengths count characters."""
    items: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if len(text) - pos < 4:
            raise QRCodeError(f"{where}: truncated data object header at position {pos}")
        tag, length_text = text[pos : pos + 2], text[pos + 2 : pos + 4]
        if not _is_digits(tag):
            raise QRCodeError(f"{where}: non-numeric ID {tag!r} at position {pos}")
        if not _is_digits(length_text):
            raise QRCodeError(f"{where}: non-numeric length {length_text!r} for ID {tag}")
        start, end = pos + 4, pos + 4 + int(length_text)
        if end > len(text):
            raise QRCodeError(
                f"{where}: truncated value for ID {tag}: length {length_text} but only "
                f"{len(text) - start} characters remain"
            )
        items.append((tag, text[start:end]))
        pos = end
    return items


def _to_dict(items: list[tuple[str, str]], where: str) -> dict[str, str]:
    """The pairs as a dict; an ID may appear only once."""
    result: dict[str, str] = {}
    for tag, value in items:
        if tag in result:
            raise QRCodeError(f"{where}: duplicate ID {tag}")
        result[tag] = value
    return result


def _nest(tag: str, value: str) -> object:
    """A top-level value as the tree holds it: templates become dicts, the rest stay strings."""
    where = f"template {tag}"
    if tag in _ACCOUNT_TEMPLATES or tag in (_ADDITIONAL_DATA, _LANGUAGE_TEMPLATE):
        return _to_dict(_split_tlv(value, where), where)
    if tag in _UNRESERVED_TEMPLATES:  # free for private use: nested only if it reads as TLV
        try:
            return _to_dict(_split_tlv(value, where), where)
        except QRCodeError:
            return value
    return value


def _check_crc(payload: str, tags: list[tuple[str, str]]) -> None:
    """Tag 63 must be last, four hex digits, and match the CRC of everything before them."""
    ids = [tag for tag, _ in tags]
    if _CRC_TAG not in ids:
        raise QRCodeError("missing tag 63 (CRC)")
    if ids[-1] != _CRC_TAG:
        raise QRCodeError("tag 63 (CRC) must be the last data object")
    stated = tags[-1][1]
    if len(stated) != 4 or not all(char in _HEX_DIGITS for char in stated):
        raise QRCodeError(f"tag 63 (CRC) must be 4 hex digits, got {stated!r}")
    try:
        body = payload[:-4].encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: not text any scanner could produce
        raise QRCodeError("payload is not valid Unicode text") from exc
    computed = crc16_ccitt_false(body)
    if computed != int(stated, 16):
        raise QRCodeError(f"CRC mismatch: payload says {stated}, computed {computed:04X}")


def _parse_amount(text: str) -> int:
    """Tag 54 as integer fen, by hand: digits, optionally "." and one or two more digits."""
    whole, dot, fraction = text.partition(".")
    if (
        len(text) > AMOUNT_MAX_CHARS
        or not _is_digits(whole)
        or (dot and not _is_digits(fraction))
        or len(fraction) > 2
    ):
        raise QRCodeError(
            f"tag 54 amount {text!r} is not a decimal of at most {AMOUNT_MAX_CHARS} characters "
            "with at most 2 fraction digits"
        )
    return int(whole) * 100 + int(fraction.ljust(2, "0"))


def _check_mandatory(tree: TagTree) -> None:
    """The spec's mandatory objects are present, non-empty and well formed."""
    for tag in _MANDATORY:
        if not tree.get(tag):
            raise QRCodeError(f"missing mandatory tag {tag}")
    if not any("02" <= tag <= "51" and value for tag, value in tree.items()):
        raise QRCodeError("missing merchant account information (at least one of tags 02-51)")
    _check_format("00", tree["00"], lambda v: v == "01", 'must be "01"')
    _check_format("01", tree.get("01", "11"), lambda v: v in _POINT_OF_INITIATION, "11 or 12")
    _check_format("52", tree["52"], _four_digits, "4 digits")
    _check_format("53", tree["53"], _three_digits, "3 digits")
    _check_format("58", tree["58"], _is_country, "2 letters A-Z")
    if _LANGUAGE_TEMPLATE in tree:
        language = tree[_LANGUAGE_TEMPLATE]
        if not isinstance(language, dict) or not language.get("00") or not language.get("01"):
            raise QRCodeError("tag 64 (language template) needs sub-tags 00 and 01")


def _check_format(tag: str, value: object, ok: _Check, expected: str) -> None:
    """Raise unless ``value`` is a string that ``ok`` accepts; ``expected`` goes in the message."""
    if not isinstance(value, str) or not ok(value):
        raise QRCodeError(f"tag {tag} value {value!r} is malformed: expected {expected}")


def parse(payload: str) -> MerchantQR:
    """Read a scanned payload; raise :class:`QRCodeError` naming the first problem found.

    Order: size, TLV structure, ID uniqueness, tag 00 first, tag 63 last and its CRC, templates,
    then mandatory fields and the amount. Tags may otherwise appear in any order.
    """
    if not isinstance(payload, str):
        raise QRCodeError(f"payload must be str, not {type(payload).__name__}")
    if len(payload) > PAYLOAD_MAX_CHARS:
        raise QRCodeError(f"payload too long: {len(payload)} > {PAYLOAD_MAX_CHARS} characters")
    if not payload:
        raise QRCodeError("empty payload")
    items = _split_tlv(payload, "payload")
    flat = _to_dict(items, "payload")
    if not items or items[0][0] != "00":
        raise QRCodeError("tag 00 (payload format indicator) must come first")
    _check_crc(payload, items)
    tree: TagTree = {tag: _nest(tag, value) for tag, value in flat.items()}
    _check_mandatory(tree)
    amount = flat.get("54")
    return MerchantQR(
        amount_fen=None if amount is None else _parse_amount(amount),
        currency=flat["53"],
        merchant_name=flat["59"],
        merchant_city=flat["60"],
        country_code=flat["58"],
        point_of_initiation=_POINT_OF_INITIATION[flat.get("01", "11")],
        fields=tree,
    )


# --- encoding ------------------------------------------------------------------------------------


def _tlv(tag: str, value: str) -> str:
    """One data object; its length counts characters and must fit the two-digit field."""
    if not 1 <= len(value) <= VALUE_MAX_CHARS:
        raise QRCodeError(
            f"tag {tag} value must be 1-{VALUE_MAX_CHARS} characters, not {len(value)}"
        )
    return f"{tag}{len(value):02d}{value}"


def _text(name: str, value: object, max_chars: int = VALUE_MAX_CHARS) -> str:
    """A caller's string, checked: 1..max_chars characters, encodable as UTF-8."""
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        raise QRCodeError(f"{name} must be a string of 1-{max_chars} characters, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise QRCodeError(f"{name} is not valid Unicode text") from exc
    return value


def _template(tag: str, subfields: object, allowed: range, required: tuple[str, ...]) -> str:
    """Encode a template's sub-fields in ascending ID order."""
    if not isinstance(subfields, dict):
        raise QRCodeError(f"tag {tag} sub-fields must be a dict, got {subfields!r}")
    for sub in subfields:
        if not (isinstance(sub, str) and len(sub) == 2 and _is_digits(sub) and int(sub) in allowed):
            span = f"{allowed.start:02d}-{allowed.stop - 1:02d}"
            raise QRCodeError(f"tag {tag}: sub-tag {sub!r} must be two digits in {span}")
    for sub in required:
        if sub not in subfields:
            raise QRCodeError(f"tag {tag} needs sub-tag {sub}")
    parts = [_tlv(sub, _text(f"tag {tag}/{sub}", subfields[sub])) for sub in sorted(subfields)]
    return _tlv(tag, "".join(parts))


def _format_amount(amount_fen: object) -> str:
    """Integer fen as tag 54's decimal string, always with two fraction digits ("12.30")."""
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or amount_fen < 0:
        raise QRCodeError(f"amount_fen must be a non-negative int, got {amount_fen!r}")
    text = f"{amount_fen // 100}.{amount_fen % 100:02d}"
    if len(text) > AMOUNT_MAX_CHARS:
        raise QRCodeError(f"amount_fen {amount_fen} does not fit in {AMOUNT_MAX_CHARS} characters")
    return text


def _checked(tag: str, value: object, ok: _Check, expected: str) -> str:
    _check_format(tag, value, ok, expected)
    return str(value)


def _accounts(merchant_account: object) -> list[str]:
    """Tags 26-51, each a template whose sub-tag 00 (globally unique identifier) is mandatory."""
    if not isinstance(merchant_account, dict) or not merchant_account:
        raise QRCodeError("merchant_account is required: at least one template in tags 26-51")
    for tag in merchant_account:
        if tag not in _ACCOUNT_TEMPLATES:
            raise QRCodeError(f"merchant_account tag {tag!r} must be in 26-51")
    return [
        _template(tag, merchant_account[tag], range(100), ("00",))
        for tag in sorted(merchant_account)
    ]


def encode(
    *,
    merchant_name: str,
    merchant_city: str,
    currency: str = "156",
    country_code: str = "CN",
    amount_fen: int | None = None,
    point_of_initiation: Literal["static", "dynamic"] = "static",
    merchant_account: dict[str, dict[str, str]] | None = None,
    additional_data: dict[str, str] | None = None,
    merchant_category_code: str = "0000",
    language_template: dict[str, str] | None = None,
) -> str:
    """Build a payload with data objects in ascending ID order and tag 63 last.

    ``merchant_account`` is required in practice (the spec wants at least one account template);
    it defaults to None only so every argument can be passed by name. Empty ``additional_data``
    or ``language_template`` are left out. Raises :class:`QRCodeError` on any invalid input.
    """
    codes = {name: code for code, name in _POINT_OF_INITIATION.items()}
    if point_of_initiation not in codes:
        raise QRCodeError(
            f"point_of_initiation must be 'static' or 'dynamic', not {point_of_initiation!r}"
        )
    parts = [_tlv("00", "01"), _tlv("01", codes[point_of_initiation])]
    parts += _accounts(merchant_account)
    parts.append(_tlv("52", _checked("52", merchant_category_code, _four_digits, "4 digits")))
    parts.append(_tlv("53", _checked("53", currency, _three_digits, "3 digits")))
    if amount_fen is not None:
        parts.append(_tlv("54", _format_amount(amount_fen)))
    parts.append(_tlv("58", _checked("58", country_code, _is_country, "2 letters A-Z")))
    parts.append(_tlv("59", _text("merchant_name", merchant_name, MERCHANT_NAME_MAX_CHARS)))
    parts.append(_tlv("60", _text("merchant_city", merchant_city, MERCHANT_CITY_MAX_CHARS)))
    if additional_data:
        parts.append(_template(_ADDITIONAL_DATA, additional_data, range(1, 100), ()))
    if language_template:
        parts.append(_template(_LANGUAGE_TEMPLATE, language_template, range(100), ("00", "01")))
    body = "".join(parts) + _CRC_HEADER
    payload = f"{body}{crc16_ccitt_false(body.encode('utf-8')):04X}"
    if len(payload) > PAYLOAD_MAX_CHARS:
        raise QRCodeError(f"payload too long: {len(payload)} > {PAYLOAD_MAX_CHARS} characters")
    return payload


# --- e-CNY ledger codes: what a wallet reads from a scanned code ---------------------------------

ECNY_QR_GUID: Final = "cn.ecny.ledger"
"""The globally unique identifier (sub-tag 00) of the merchant account template (tags 26-51)
in an EMVCo QR code that names an e-CNY ledger wallet: sub-tag 01 is the payee wallet's UUID.
``qr.encode(merchant_account={"26": {"00": ECNY_QR_GUID, "01": wallet_id}}, ...)``."""
ORDER_REFERENCE_CHARS: Final = 22
"""Length of an order reference (62/05) on an e-CNY code: a 16-byte order id, base64url."""
_BASE64URL: Final = frozenset(string.ascii_letters + string.digits + "-_")


def ecny_payee(scanned: MerchantQR) -> str:
    """The payee wallet named by an e-CNY merchant QR code (see :data:`ECNY_QR_GUID`)."""
    if scanned.currency != "156":
        raise QRCodeError(f"the QR code asks for currency {scanned.currency}, not CNY (156)")
    for template in scanned.merchant_account_information.values():
        if isinstance(template, dict) and template.get("00") == ECNY_QR_GUID:
            payee = template.get("01")
            try:
                return str(uuid.UUID(str(payee)))
            except ValueError:
                raise QRCodeError(f"the QR code's payee {payee!r} is not a wallet id") from None
    raise QRCodeError(
        f"not an e-CNY ledger QR code: no merchant account template with GUID {ECNY_QR_GUID!r}"
    )


def ecny_order_id(scanned: MerchantQR) -> int | None:
    """The payment order an e-CNY code is for: 62/05 holding the order's 16-byte id as
    :data:`ORDER_REFERENCE_CHARS` characters of unpadded base64url (the merchant API's
    ``order_reference``). None for a static code, or a reference label of the merchant's own."""
    reference = scanned.reference_label
    if reference is None or len(reference) != ORDER_REFERENCE_CHARS:
        return None
    if not set(reference) <= _BASE64URL:
        return None
    raw = base64.urlsafe_b64decode(reference + "==")
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != reference:
        return None  # stray bits in the last character: not an id the merchant API wrote
    return int.from_bytes(raw, "big") or None
