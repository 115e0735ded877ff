"""Request and response schemas of the HTTP API (pydantic).

Ids are 128-bit and travel as UUID strings (any 128-bit value; the SDK makes time-ordered
UUIDv7s, which keep the database's indexes fast). Money is an integer number of fen: floats and
strings are refused with a message that says so.
"""

from __future__ import annotations

import base64
import re
import uuid
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    field_validator,
)

from ledger.domain import (
    AMOUNT_MAX,
    BATCH_MAX,
    METADATA_BYTES_MAX,
    METADATA_KEYS_MAX,
    OWNER_BYTES_MAX,
    TIMEOUT_S_MAX,
)
from ledger.entry import canonical_metadata

_CANONICAL_UUID: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
"""The form nearly every id arrives in, read without ``uuid.UUID`` (a few times faster: three
ids in every payment)."""


def parse_id(value: Any) -> int:
    """A UUID string (with or without dashes) -> its 128-bit integer."""
    if not isinstance(value, str):
        raise ValueError("ids are UUID strings, e.g. 0190f0a2-7c1e-7b3a-9d2e-1f2a3b4c5d6e")
    if _CANONICAL_UUID.fullmatch(value):
        return int(value.replace("-", ""), 16)
    try:
        return uuid.UUID(value).int
    except ValueError:
        raise ValueError(f"{value!r} is not a UUID string") from None


def format_id(value: int) -> str:
    """A 128-bit id as the canonical UUID string (what ``str(uuid.UUID(int=value))`` gives)."""
    if not 0 <= value < 1 << 128:
        raise ValueError("ids are 128-bit")
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


Id128 = Annotated[
    int,
    PlainValidator(parse_id),
    PlainSerializer(format_id, return_type=str),
    WithJsonSchema({"type": "string", "format": "uuid"}),
]
AmountFen = Annotated[
    int,
    Field(strict=True, ge=1, le=AMOUNT_MAX, description="Integer fen (0.01 CNY). Never a float."),
]
Currency = Literal["CNY"]
AccountFlagName = Literal["debits_must_not_exceed_credits", "credits_must_not_exceed_debits"]
TransferFlagName = Literal["linked", "pending", "post_pending", "void_pending", "attempt"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccountCreate(_Strict):
    id: Id128
    currency: Currency = "CNY"
    code: int = Field(strict=True, ge=1, le=65535, description="Account type, chosen by you.")
    flags: list[AccountFlagName] = Field(default_factory=list, max_length=2)
    owner: str = Field(
        default="", max_length=OWNER_BYTES_MAX, description="Pseudonymous owner reference."
    )
    operator: str | None = Field(
        default=None,
        max_length=OWNER_BYTES_MAX,
        description="Central bank only: the operator the account belongs to.",
    )


class AccountBatch(_Strict):
    accounts: list[AccountCreate] = Field(min_length=1, max_length=BATCH_MAX)


class TransferCreate(_Strict):
    id: Id128
    debit_account_id: Id128 | None = None
    credit_account_id: Id128 | None = None
    amount: Annotated[int, Field(strict=True, ge=0, le=AMOUNT_MAX)] = Field(
        default=0,
        description="Integer fen (0.01 CNY), > 0. For post_pending, 0 posts the full pending "
        "amount; for void_pending, 0 or the pending amount.",
    )
    currency: Currency = "CNY"
    code: int = Field(default=0, strict=True, ge=0, le=65535)
    flags: list[TransferFlagName] = Field(default_factory=list, max_length=5)
    pending_id: Id128 | None = None
    timeout_s: int = Field(default=0, strict=True, ge=0, le=TIMEOUT_S_MAX)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=METADATA_KEYS_MAX)

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, str]) -> dict[str, str]:
        if len(canonical_metadata(value)) > METADATA_BYTES_MAX:
            raise ValueError(f"metadata is limited to {METADATA_BYTES_MAX} bytes of JSON")
        return value


class TransferBatch(_Strict):
    transfers: list[TransferCreate] = Field(min_length=1, max_length=BATCH_MAX)


class ItemResult(BaseModel):
    index: int
    id: str
    result: str = Field(description="'ok' or a result code such as 'exceeds_credits'.")
    replayed: bool = Field(description="True when this id was seen before: the original outcome.")
    seq: int | None = Field(default=None, description="Journal sequence number, if accepted.")
    timestamp: int | None = None


class BatchResults(BaseModel):
    results: list[ItemResult]


class Balances(BaseModel):
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int


class AccountPublic(BaseModel):
    id: str
    currency: str
    code: int
    flags: list[str]
    owner: str
    operator: str
    balances: Balances
    created_seq: int
    timestamp: int


class BalanceAsOf(Balances):
    account_id: str
    as_of_seq: int
    last_entry_seq: int


class TransferPublic(BaseModel):
    id: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    currency: str
    code: int
    flags: list[str]
    pending_id: str | None
    timeout_s: int
    metadata: dict[str, str]
    timestamp: int
    result: str
    seq: int | None
    pending_state: str | None = Field(
        default=None, description="pending | posted | voided | expired, for pending transfers."
    )


class EntryPublic(BaseModel):
    seq: int
    kind: str
    entry: dict[str, Any]
    body: str = Field(description="The canonical entry bytes, base64.")


class EntryPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[EntryPublic]
    has_more: bool


class CheckpointPublic(BaseModel):
    origin: str
    tree_size: int
    root_hash: str = Field(description="base64")
    timestamp: int
    signature: str = Field(description="Ed25519 over the note's signed lines, base64")
    note: str = Field(description="The checkpoint as a C2SP signed note")


class InclusionProofPublic(BaseModel):
    leaf_index: int
    tree_size: int
    leaf_hash: str
    proof: list[str]


class ConsistencyProofPublic(BaseModel):
    first: int
    second: int
    proof: list[str]


class PublicKey(BaseModel):
    algorithm: Literal["Ed25519"] = "Ed25519"
    public_key: str = Field(description="raw 32-byte key, base64")
    key_id: str = Field(description="signed-note key id, hex")
    origin: str


class ApiKeyCreate(_Strict):
    role: Literal["operator"] = "operator"
    operator: str = Field(min_length=1, max_length=OWNER_BYTES_MAX)
    name: str = Field(default="", max_length=128)


class ApiKeyCreated(BaseModel):
    id: str
    role: str
    operator: str
    key: str = Field(description="Shown once. Store it now: the ledger keeps only a hash.")


# --- e-CNY: issuance, bank accounts, wallets, signed payments -------------------------------------


def parse_b64(value: Any, size: int, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} is a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raise ValueError(f"{what} is not valid base64") from None
    if len(raw) != size:
        raise ValueError(f"{what} must be {size} bytes, not {len(raw)}")
    return raw


PublicKeyB64 = Annotated[
    bytes,
    PlainValidator(lambda v: parse_b64(v, 32, "public_key")),
    PlainSerializer(lambda b: base64.b64encode(b).decode(), return_type=str),
    WithJsonSchema({"type": "string", "description": "Ed25519 public key, 32 bytes, base64"}),
]
SignatureB64 = Annotated[
    bytes,
    PlainValidator(lambda v: parse_b64(v, 64, "signature")),
    PlainSerializer(lambda b: base64.b64encode(b).decode(), return_type=str),
    WithJsonSchema({"type": "string", "description": "Ed25519 signature, 64 bytes, base64"}),
]


class OperatorCreate(_Strict):
    operator: str = Field(min_length=1, max_length=OWNER_BYTES_MAX, pattern=r"^[a-z0-9_]+$")


class MoneyMove(_Strict):
    """A client-chosen id (for idempotency) and an amount in integer fen."""

    id: Id128
    amount: AmountFen


class Issuance(MoneyMove):
    operator: str = Field(min_length=1, max_length=OWNER_BYTES_MAX)


class BankAccountCreate(_Strict):
    id: Id128
    owner: str = Field(default="", max_length=OWNER_BYTES_MAX)


class Kyc(_Strict):
    """The owner's details: kept encrypted in the operator's KYC store, never in the journal."""

    name: str | None = Field(default=None, max_length=128)
    id_number: str | None = Field(default=None, max_length=64)
    phone: str | None = Field(default=None, max_length=32)

    def fields(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v}


class WalletCreate(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    id: Id128
    kind: Literal["personal", "merchant"] = "personal"
    wallet_class: int = Field(alias="class", ge=1, le=4, strict=True)
    public_key: PublicKeyB64
    kyc: Kyc
    linked_bank_account: Id128 | None = None
    reverse_waterfall: bool = Field(default=False, strict=True)


WALLET_BATCH_MAX: Final = 1000


class WalletBatch(_Strict):
    wallets: list[WalletCreate] = Field(min_length=1, max_length=WALLET_BATCH_MAX)


class WalletClassChange(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    wallet_class: int = Field(alias="class", ge=1, le=4, strict=True)
    kyc: Kyc | None = None
    reason: str = Field(default="", max_length=200)


class WalletKeyRotation(_Strict):
    public_key: PublicKeyB64
    verification_reference: str = Field(
        min_length=1, max_length=100, description="How the operator re-verified the owner."
    )


class WalletSettings(_Strict):
    reverse_waterfall: bool | None = Field(default=None, strict=True)
    linked_bank_account: Id128 | None = None


class RevealRequest(_Strict):
    legal_basis: str = Field(min_length=3, max_length=200)
    requester: str = Field(min_length=1, max_length=100)
    case_reference: str = Field(default="", max_length=100)


class SubWalletLimits(_Strict):
    balance_cap: AmountFen
    single: AmountFen
    daily: AmountFen
    annual: AmountFen


class SubWalletCreate(_Strict):
    id: Id128
    public_key: PublicKeyB64
    bound_payee: Id128 = Field(description="The merchant wallet this sub-wallet may pay.")
    limits: SubWalletLimits


class SubWalletClose(_Strict):
    id: Id128 = Field(description="Id of the transfer that returns the balance to the parent.")
    reason: str = Field(default="", max_length=200)


class SignedPaymentIn(_Strict):
    id: Id128
    payer: Id128
    payee: Id128
    amount: AmountFen
    currency: Currency = "CNY"
    expires_at_ms: int = Field(strict=True, ge=0, le=2**63 - 1)
    key_version: int = Field(strict=True, ge=1, le=65535)
    signature: SignatureB64
    kind: Literal["payment", "sub_wallet_fund"] = "payment"
    metadata: dict[str, str] = Field(default_factory=dict, max_length=METADATA_KEYS_MAX)


class PaymentBatch(_Strict):
    payments: list[SignedPaymentIn] = Field(min_length=1, max_length=BATCH_MAX)
    receipts: bool = Field(
        default=False, strict=True, description="Include a receipt for each accepted one."
    )
