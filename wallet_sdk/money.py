"""Money as integer fen: the one numeric type the SDK lets near an amount.

``Money(250)`` is 250 fen (¥2.50); ``Money.yuan("12.30")`` parses an exact decimal string. A
float is refused everywhere with a ``TypeError`` that says what to do instead, because binary
floating point cannot hold 0.1 yuan and an accounting system must never round by accident
(beancount's rule). ``bool`` is refused too, although Python counts it as an ``int``.

Money may be negative: it is a signed quantity, so ``a - b`` is always defined (a difference
of balances, a refund). What must be positive is an *amount to move*: every SDK method that
moves money checks that on its own (:func:`amount_fen`), with a ``ValueError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final

__all__ = ["FEN_PER_YUAN", "Money", "amount_fen"]

FEN_PER_YUAN: Final = 100
_YUAN_TEXT: Final = re.compile(r"(-?)([0-9]{1,16})(?:\.([0-9]{1,2}))?")
"""Digits, optionally "." and one or two more: no exponent, sign only in front, no spaces.
16 integer digits bound the work and cover any amount the ledger accepts (u64 fen)."""


def _refuse_non_int(value: object, what: str) -> None:
    if isinstance(value, float):
        raise TypeError(
            f"{what} must be integer fen, not the float {value!r}: floats cannot hold money "
            f"exactly. Use Money({round(value * FEN_PER_YUAN)}) for fen or "
            f'Money.yuan("{value}") for a decimal string.'
        )
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be integer fen (int), not {type(value).__name__}")


@dataclass(frozen=True, order=True, slots=True)
class Money:
    """An amount of CNY in integer fen (0.01 yuan). Immutable; compares and adds only with
    Money, so fen and yuan can never be mixed up by accident."""

    fen: int

    def __post_init__(self) -> None:
        _refuse_non_int(self.fen, "Money")

    @classmethod
    def yuan(cls, amount: str | int | Decimal) -> Money:
        """Money from yuan: ``"12.30"`` (at most two decimals), an int, or an exact Decimal."""
        if isinstance(amount, str):
            match = _YUAN_TEXT.fullmatch(amount)
            if match is None:
                raise ValueError(
                    f"{amount!r} is not an amount in yuan: write digits with at most two "
                    'decimals, e.g. "12.30"'
                )
            sign, whole, fraction = match.groups()
            fen = int(whole) * FEN_PER_YUAN + int((fraction or "").ljust(2, "0"))
            return cls(-fen if sign else fen)
        if isinstance(amount, Decimal):
            try:
                fen_exact = amount * FEN_PER_YUAN
                if not amount.is_finite() or fen_exact != fen_exact.to_integral_value():
                    raise ValueError(f"{amount} yuan is not a whole number of fen")
            except InvalidOperation as exc:
                raise ValueError(f"{amount} is not an amount in yuan") from exc
            return cls(int(fen_exact))
        _refuse_non_int(amount, "Money.yuan")
        return cls(amount * FEN_PER_YUAN)

    @property
    def decimal(self) -> Decimal:
        """The amount in yuan as an exact Decimal (``Decimal("12.30")``)."""
        return Decimal(self.fen).scaleb(-2)

    def __str__(self) -> str:
        sign = "-" if self.fen < 0 else ""
        whole, fraction = divmod(abs(self.fen), FEN_PER_YUAN)
        return f"{sign}¥{whole}.{fraction:02d}"

    def __repr__(self) -> str:
        return f"Money({self.fen})"

    def __add__(self, other: Money) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        return Money(self.fen + other.fen)

    def __sub__(self, other: Money) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        return Money(self.fen - other.fen)

    def __mul__(self, times: int) -> Money:
        """Money times a whole number (``price * 3``); never times a fraction."""
        if isinstance(times, bool) or not isinstance(times, int):
            return NotImplemented
        return Money(self.fen * times)

    __rmul__ = __mul__

    def __neg__(self) -> Money:
        return Money(-self.fen)

    def __abs__(self) -> Money:
        return Money(abs(self.fen))

    def __bool__(self) -> bool:
        return self.fen != 0


def amount_fen(amount: Money | int, what: str = "amount") -> int:
    """An amount to move, as positive integer fen: ``Money`` or a plain int (fen).

    Floats (and bools, and strings) raise ``TypeError``; zero or less raises ``ValueError``.
    """
    fen = amount.fen if isinstance(amount, Money) else amount
    _refuse_non_int(fen, what)
    if fen <= 0:
        raise ValueError(f"{what} must be positive, got {fen} fen")
    return fen
