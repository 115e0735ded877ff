"""Request bodies of the merchant API (responses are the views in ``service``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ledger.api.models import AmountFen, Currency, Id128, Kyc, SignatureB64
from ledger.domain import METADATA_KEYS_MAX


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class MerchantCreate(_Strict):
    name: str = Field(min_length=1, max_length=25, description="Shown in QR codes (EMVCo tag 59).")
    city: str = Field(min_length=1, max_length=15, description="EMVCo tag 60.")
    mcc: str = Field(default="5999", pattern=r"^\d{4}$", description="Merchant category code.")
    wallet_class: int = Field(default=2, alias="class", ge=1, le=4, strict=True)
    kyc: Kyc
    linked_bank_account: Id128 = Field(description="Where settlements (and sweeps) go.")
    settlement_schedule: Literal["manual", "daily"] = "manual"


class OrderCreate(_Strict):
    amount: AmountFen
    currency: Currency = "CNY"
    out_trade_no: str = Field(min_length=1, max_length=64, description="Your order number.")
    description: str = Field(default="", max_length=200)
    expires_at: int | None = Field(
        default=None,
        strict=True,
        description="Unix seconds; at most 24 hours ahead; default 15 minutes.",
    )
    metadata: dict[str, str] = Field(default_factory=dict, max_length=METADATA_KEYS_MAX)
    payment_code: str | None = Field(
        default=None, max_length=200, description="Capture this customer payment code at once."
    )

    @field_validator("metadata")
    @classmethod
    def _short_values(cls, value: dict[str, str]) -> dict[str, str]:
        if any(len(k) > 40 or len(v) > 500 for k, v in value.items()):
            raise ValueError("metadata keys are at most 40 characters, values 500")
        return value


class CaptureCode(_Strict):
    payment_code: str = Field(min_length=1, max_length=200)


class OrderPayment(_Strict):
    """A payment of an order, signed by the payer (the order id is its transfer id)."""

    payer: Id128
    amount: AmountFen
    currency: Currency = "CNY"
    expires_at_ms: int = Field(strict=True, ge=0)
    key_version: int = Field(strict=True, ge=1, le=65535)
    signature: SignatureB64


class RefundCreate(_Strict):
    payment_order: Id128
    amount: AmountFen
    out_refund_no: str = Field(min_length=1, max_length=64)
    reason: str = Field(default="", max_length=200)
