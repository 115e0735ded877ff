"""wallet_sdk.money: integer fen, exact yuan parsing, floats refused everywhere."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wallet_sdk.money import Money, amount_fen

FEN = st.integers(min_value=-(10**15), max_value=10**15)


def test_money_is_integer_fen_and_prints_as_yuan() -> None:
    assert Money(250).fen == 250
    assert str(Money(250)) == "¥2.50"
    assert str(Money(5)) == "¥0.05"
    assert str(Money(0)) == "¥0.00"
    assert str(Money(-1230)) == "-¥12.30"
    assert repr(Money(1230)) == "Money(1230)"
    assert Money(1230).decimal == Decimal("12.30")


@pytest.mark.parametrize(
    ("text", "fen"),
    [("12.30", 1230), ("12.3", 1230), ("12", 1200), ("0.05", 5), ("0.5", 50), ("-1.50", -150),
     ("0", 0), ("007.01", 701), ("9999999999999999.99", 999999999999999999)],
)  # fmt: skip
def test_yuan_parses_exact_decimal_strings(text: str, fen: int) -> None:
    assert Money.yuan(text) == Money(fen)


@pytest.mark.parametrize(
    "text",
    ["12.345", "1e3", " 12", "12 ", "12.", ".5", "¥12", "", "1,000", "１２", "+1", "--1", "0x10",
     "1_000", "NaN", "12.3.4", "10000000000000000"],
)  # fmt: skip
def test_yuan_refuses_anything_but_digits_with_two_decimals(text: str) -> None:
    with pytest.raises(ValueError, match="not an amount in yuan"):
        Money.yuan(text)


def test_yuan_takes_ints_and_exact_decimals() -> None:
    assert Money.yuan(12) == Money(1200)
    assert Money.yuan(Decimal("12.30")) == Money(1230)
    assert Money.yuan(Decimal("12.300")) == Money(1230)  # the same number, written longer
    with pytest.raises(ValueError, match="whole number of fen"):
        Money.yuan(Decimal("0.001"))
    with pytest.raises(ValueError):
        Money.yuan(Decimal("NaN"))
    with pytest.raises(ValueError):
        Money.yuan(Decimal("Infinity"))


def test_floats_are_refused_with_a_message_saying_what_to_do() -> None:
    with pytest.raises(TypeError, match=r"not the float 12\.3.*Money\(1230\).*Money\.yuan"):
        Money(12.3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float"):
        Money.yuan(12.3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float"):
        amount_fen(1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [True, False, "12", None, b"12", [1]])
def test_bools_strings_and_others_are_not_fen(value: object) -> None:
    with pytest.raises(TypeError, match="integer fen"):
        Money(value)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        amount_fen(value)  # type: ignore[arg-type]


def test_money_is_immutable_and_hashable() -> None:
    m = Money(100)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.fen = 200  # type: ignore[misc]
    assert len({Money(100), Money(100), Money(101)}) == 2


def test_arithmetic_and_comparison_only_with_money() -> None:
    assert Money(250) + Money(50) == Money(300)
    assert Money(250) - Money(300) == Money(-50)  # a difference may be negative
    assert Money(250) * 3 == 3 * Money(250) == Money(750)
    assert -Money(5) == Money(-5) and abs(Money(-5)) == Money(5)
    assert Money(1) < Money(2) <= Money(2) and Money(3) > Money(2)
    assert not Money(0) and Money(1)
    assert Money(5) != 5  # fen and Money never compare equal: the unit would be a guess
    one: Any = Money(1)  # the wrong operands below are the point: checked at run time
    for bad in (lambda: one + 1, lambda: one - 1, lambda: one * 1.5, lambda: one * True,
                lambda: one < 2, lambda: 1 + one):  # fmt: skip
        with pytest.raises(TypeError):
            bad()


def test_amount_fen_accepts_money_or_int_and_wants_it_positive() -> None:
    assert amount_fen(Money(250)) == 250
    assert amount_fen(250) == 250
    for bad in (0, -1, Money(0), Money(-5)):
        with pytest.raises(ValueError, match="must be positive"):
            amount_fen(bad)


@given(FEN)
def test_str_round_trips_through_yuan(fen: int) -> None:
    text = str(Money(fen)).replace("¥", "")
    assert Money.yuan(text) == Money(fen)
    assert Money.yuan(Money(fen).decimal) == Money(fen)


@given(FEN, FEN)
def test_addition_and_subtraction_are_exact_inverses(a: int, b: int) -> None:
    assert Money(a) + Money(b) - Money(b) == Money(a)
    assert (Money(a) < Money(b)) == (a < b)
