"""Domain types of the ledger: accounts, transfers, flags, result codes and limits.

Pure data (TigerBeetle's model, in integer fen). Nothing here does I/O. Amounts are ``int``
fen (0.01 CNY); a float anywhere near money is a bug, so constructors assert the type.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum, IntFlag
from typing import Final

# --- Limits (TIGER_STYLE: a named limit on everything) -------------------------------------------

BATCH_MAX: Final = 8190
"""Most events in one request and in one database batch (TigerBeetle's figure)."""

AMOUNT_MAX: Final = 10**15
"""Largest single amount in fen (10 trillion yuan); sums stay inside signed 64-bit columns."""

BALANCE_MAX: Final = 2**63 - 1
"""Largest value of a balance field; a transfer that would pass it is rejected (``overflows_*``)."""

ID_MAX: Final = 2**128 - 1
"""Ids are unsigned 128-bit integers; zero and ID_MAX are reserved (as in TigerBeetle)."""

TIMEOUT_S_MAX: Final = 2**32 - 1
METADATA_KEYS_MAX: Final = 16
METADATA_BYTES_MAX: Final = 512
"""Metadata is a small map of strings, at most this many bytes in canonical JSON."""

OWNER_BYTES_MAX: Final = 64
"""Owner and operator references are short pseudonymous strings, never personal data."""

AUTHORIZATION_BYTES_MAX: Final = 1024
"""Room for a payer's signature block kept with the entry (wallet payments)."""

CURRENCIES: Final[dict[str, int]] = {"CNY": 156}
"""Currency code -> ledger number (ISO 4217 numeric). One ledger number per currency."""
LEDGER_CURRENCIES: Final[dict[int, str]] = {v: k for k, v in CURRENCIES.items()}


class AccountFlags(IntFlag):
    NONE = 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1 << 0
    CREDITS_MUST_NOT_EXCEED_DEBITS = 1 << 1
    CLOSED = 1 << 2


ACCOUNT_FLAG_NAMES: Final = {
    "debits_must_not_exceed_credits": AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
    "credits_must_not_exceed_debits": AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS,
    "closed": AccountFlags.CLOSED,
}


class TransferFlags(IntFlag):
    NONE = 0
    LINKED = 1 << 0
    PENDING = 1 << 1
    POST_PENDING = 1 << 2
    VOID_PENDING = 1 << 3
    ATTEMPT = 1 << 4
    """A failure does not consume the id: a later transfer with the same id may still succeed
    (a payment order's id pays it once, whoever tries first and however often)."""


TRANSFER_FLAG_NAMES: Final = {
    "linked": TransferFlags.LINKED,
    "pending": TransferFlags.PENDING,
    "post_pending": TransferFlags.POST_PENDING,
    "void_pending": TransferFlags.VOID_PENDING,
    "attempt": TransferFlags.ATTEMPT,
}


def flag_names(flags: int, names: Mapping[str, int]) -> list[str]:
    """The names of the bits set in ``flags``, in declaration order."""
    return [name for name, bit in names.items() if flags & bit]


class PendingState(IntEnum):
    """Where a pending transfer stands. Only PENDING ones still hold funds."""

    PENDING = 1
    POSTED = 2
    VOIDED = 3
    EXPIRED = 4


class Result(IntEnum):
    """Per-item result codes. Expected rejections are codes, never exceptions."""

    OK = 0
    LINKED_EVENT_FAILED = 1
    LINKED_EVENT_CHAIN_OPEN = 2
    ID_MUST_NOT_BE_ZERO = 3
    ID_MUST_NOT_BE_INT_MAX = 4
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = 5
    LEDGER_MUST_NOT_BE_ZERO = 6
    CODE_MUST_NOT_BE_ZERO = 7
    # accounts
    ACCOUNT_FLAGS_INVALID = 15
    ACCOUNT_NOT_FOUND = 16
    ACCOUNT_ALREADY_CLOSED = 17
    ACCOUNT_HAS_PENDING_TRANSFERS = 18
    # transfers: validation that does not depend on state (does not consume the id)
    DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 20
    CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 21
    ACCOUNTS_MUST_BE_DIFFERENT = 22
    PENDING_ID_MUST_BE_ZERO = 23
    PENDING_ID_MUST_NOT_BE_ZERO = 24
    PENDING_ID_MUST_BE_DIFFERENT = 25
    TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = 26
    AMOUNT_MUST_NOT_BE_ZERO = 27
    AMOUNT_EXCEEDS_MAX = 28
    METADATA_EXCEEDS_MAX = 29
    AUTHORIZATION_EXCEEDS_MAX = 30
    OWNER_EXCEEDS_MAX = 31
    LEDGER_NOT_SUPPORTED = 32
    DEBIT_ACCOUNT_NOT_PERMITTED = 33
    """The operator acting may not move money out of this account (or its pending transfer):
    it belongs to another operator. Checked in the writer, so it holds for in-flight transfers
    too; not recorded, so it cannot burn another operator's ids."""
    SIGNATURE_REQUIRED = 34
    """A wallet was debited without its owner's signature."""
    WALLET_KEY_ROTATED = 35
    """Signed with a key the wallet no longer uses (rotated by its operator)."""
    SIGNATURE_EXPIRED = 36
    """The payer's signature had expired when the ledger sequenced the payment."""
    SIGNATURE_INVALID = 37
    """The signature does not verify with the payer's key (checked before the writer)."""
    # wallets (state-dependent: recorded, so a retry of the same id gets the same answer)
    EXCEEDS_SINGLE_LIMIT = 61
    EXCEEDS_DAILY_LIMIT = 62
    EXCEEDS_ANNUAL_LIMIT = 63
    EXCEEDS_BALANCE_CAP = 64
    # transfers: depend on state (the id is consumed and a replay returns the same code)
    DEBIT_ACCOUNT_NOT_FOUND = 40
    CREDIT_ACCOUNT_NOT_FOUND = 41
    ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER = 42
    TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS = 43
    DEBIT_ACCOUNT_ALREADY_CLOSED = 44
    CREDIT_ACCOUNT_ALREADY_CLOSED = 45
    PENDING_TRANSFER_NOT_FOUND = 46
    PENDING_TRANSFER_NOT_PENDING = 47
    PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID = 48
    PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID = 49
    PENDING_TRANSFER_HAS_DIFFERENT_LEDGER = 50
    PENDING_TRANSFER_HAS_DIFFERENT_CODE = 51
    EXCEEDS_PENDING_TRANSFER_AMOUNT = 52
    PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = 53
    PENDING_TRANSFER_ALREADY_POSTED = 54
    PENDING_TRANSFER_ALREADY_VOIDED = 55
    PENDING_TRANSFER_EXPIRED = 56
    OVERFLOWS_DEBITS = 57
    OVERFLOWS_CREDITS = 58
    EXCEEDS_CREDITS = 59
    EXCEEDS_DEBITS = 60
    # replays of an id with different fields
    EXISTS_WITH_DIFFERENT_FLAGS = 65
    EXISTS_WITH_DIFFERENT_LEDGER = 66
    EXISTS_WITH_DIFFERENT_CODE = 67
    EXISTS_WITH_DIFFERENT_OWNER = 68
    EXISTS_WITH_DIFFERENT_OPERATOR = 69
    EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID = 70
    EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID = 71
    EXISTS_WITH_DIFFERENT_AMOUNT = 72
    EXISTS_WITH_DIFFERENT_PENDING_ID = 73
    EXISTS_WITH_DIFFERENT_TIMEOUT = 74
    EXISTS_WITH_DIFFERENT_METADATA = 75
    EXISTS_WITH_DIFFERENT_AUTHORIZATION = 76
    # wallet operations (not transfers)
    WALLET_NOT_FOUND = 80
    WALLET_EXISTS = 81
    WALLET_CLASS_INVALID = 82
    CLASS_DOWNGRADE_EXCEEDS_BALANCE = 83
    SUB_WALLET_PAYEE_NOT_ALLOWED = 84
    SUB_WALLET_LIMITS_INVALID = 85
    WALLET_NOT_OPERATED = 86
    LIMITS_VERSION_UNKNOWN = 87
    TRANSFER_ID_CANCELED = 88
    """The id was cancelled (a tombstone): no transfer may ever use it (e.g. a cancelled or
    expired payment order, whose id is its payment's transfer id)."""
    TRANSFER_ID_USED = 89
    """A tombstone was asked for an id a transfer already used."""
    PAYMENT_CODE_USED = 90
    """A payment code pays once; this one already has."""
    EXCEEDS_PAYMENT_CODE_AMOUNT = 91
    """The capture is larger than the payment code allows."""
    LOAN_ACTIVE = 92
    """The wallet is still repaying a loan: one loan at a time."""
    LOAN_NOT_ACTIVE = 93
    """A loan repayment from a wallet that owes nothing (or to another account than its
    operator's float)."""
    EXCEEDS_LOAN_OUTSTANDING = 94
    """The repayment is larger than what the wallet owes."""
    LOAN_TERMS_INVALID = 95
    """A disbursement names accounts that are not the lender's loan book, income and a fresh
    receivable (with credits_must_not_exceed_debits), a negative fee or a share outside
    0-10,000 basis points."""

    @property
    def label(self) -> str:
        return self.name.lower()


RECORDED_RESULTS: Final = frozenset(
    {Result.LINKED_EVENT_FAILED, Result.SUB_WALLET_PAYEE_NOT_ALLOWED}
    | {r for r in Result if 40 <= r.value < 65}
)
TOMBSTONE_RESULT: Final = Result.TRANSFER_ID_CANCELED
"""Rejections that depend on the ledger's state. They consume the transfer id: the rejection is
recorded, so a replay returns it even after the state has changed (TigerBeetle's
``id_already_failed`` rule). Rejections decided by the request alone (codes below 40) are not
recorded, since a replay gives the same answer anyway; ``exists_with_different_*`` answers refer
to the id's original outcome and are never recorded."""


class Account:
    """An account and its balances. Mutable only inside the engine (the one writer)."""

    __slots__ = (
        "code",
        "credits_pending",
        "credits_posted",
        "debits_pending",
        "debits_posted",
        "flags",
        "id",
        "ledger",
        "n",
        "operator",
        "owner",
        "seq",
        "timestamp",
        "wallet",
    )

    def __init__(
        self,
        id: int,
        ledger: int,
        code: int,
        flags: int = 0,
        owner: str = "",
        operator: str = "",
    ) -> None:
        self.id = id
        self.ledger = ledger
        self.code = code
        self.flags = int(flags)  # a plain int: IntFlag arithmetic is ~10x slower on the hot path
        self.owner = owner
        self.operator = operator
        self.debits_pending = 0
        self.debits_posted = 0
        self.credits_pending = 0
        self.credits_posted = 0
        self.timestamp = 0
        self.n = 0  # internal account number, assigned at creation, used as a compact index key
        self.seq = -1  # journal sequence number of the creation entry
        self.wallet: Wallet | None = None  # set when the account is a wallet

    def balances(self) -> tuple[int, int, int, int]:
        return (self.debits_pending, self.debits_posted, self.credits_pending, self.credits_posted)

    def __repr__(self) -> str:
        return (
            f"Account(id={self.id:#x}, ledger={self.ledger}, code={self.code}, "
            f"flags={self.flags}, balances={self.balances()})"
        )


class Transfer:
    """A transfer as submitted (id chosen by the client) plus what the engine decided.

    ``timestamp`` is assigned by the sequencer; ``state`` tracks a pending transfer's fate;
    ``result`` is the engine's verdict, kept so a replay returns it.
    """

    __slots__ = (
        "amount",
        "attachments",
        "authorization",
        "code",
        "credit_account_id",
        "debit_account_id",
        "detail",
        "flags",
        "id",
        "ledger",
        "metadata",
        "pending_id",
        "result",
        "seq",
        "state",
        "timeout_s",
        "timestamp",
    )

    def __init__(
        self,
        id: int,
        debit_account_id: int,
        credit_account_id: int,
        amount: int,
        ledger: int,
        code: int,
        flags: int = 0,
        pending_id: int = 0,
        timeout_s: int = 0,
        metadata: bytes = b"",
        authorization: bytes = b"",
    ) -> None:
        assert type(amount) is int, "amounts are integer fen"
        self.id = id
        self.debit_account_id = debit_account_id
        self.credit_account_id = credit_account_id
        self.amount = amount
        self.ledger = ledger
        self.code = code
        self.flags = int(flags)  # a plain int: IntFlag arithmetic is ~10x slower on the hot path
        self.pending_id = pending_id
        self.timeout_s = timeout_s
        self.metadata = metadata  # canonical JSON bytes (see ledger.entry.canonical_metadata)
        self.authorization = authorization  # the payer's signature block, kept with the entry
        self.timestamp = 0
        self.result: int = Result.OK
        self.state = 0  # PendingState for pending transfers, 0 otherwise
        self.seq = -1  # journal sequence number once accepted
        self.detail: dict[str, object] | None = None  # for limit rejections: which, how much
        self.attachments: list[Attachment] | None = None  # rows committed with the outcome

    def expires_at(self) -> int:
        """Nanosecond timestamp at which a pending transfer times out (0 = never)."""
        return self.timestamp + self.timeout_s * 1_000_000_000 if self.timeout_s else 0

    def __repr__(self) -> str:
        return (
            f"Transfer(id={self.id:#x}, dr={self.debit_account_id:#x}, "
            f"cr={self.credit_account_id:#x}, amount={self.amount}, flags={self.flags}, "
            f"pending_id={self.pending_id:#x}, result={Result(self.result).label})"
        )


class CloseAccount:
    """Request to close an account: no further transfers may touch it. Needs no balance."""

    __slots__ = ("account_id",)

    def __init__(self, account_id: int) -> None:
        self.account_id = account_id


# --- wallets ------------------------------------------------------------------------------------


class LimitSet:
    """A wallet class's limits in fen; 0 means no limit."""

    __slots__ = ("annual", "balance_cap", "daily", "single")

    def __init__(self, balance_cap: int, single: int, daily: int, annual: int) -> None:
        self.balance_cap = balance_cap
        self.single = single
        self.daily = daily
        self.annual = annual

    def as_dict(self) -> dict[str, int]:
        return {
            "balance_cap": self.balance_cap,
            "single": self.single,
            "daily": self.daily,
            "annual": self.annual,
        }


class Wallet:
    """What the writer knows of a wallet beyond its account: class, key, limits and spending.

    ``limits`` is set for sub-wallets (their own, smaller limits); other wallets follow their
    class in the active limits version. ``float_account`` and ``settlement_account`` are the
    operator's accounts used by the (reverse) waterfall."""

    __slots__ = (
        "bound_payee",
        "day",
        "float_account",
        "id",
        "key_version",
        "kind",
        "klass",
        "limits",
        "linked_bank",
        "loan_account",
        "loan_book",
        "loan_share_bp",
        "operator",
        "parent",
        "public_key",
        "reverse_waterfall",
        "settlement_account",
        "spent_day",
        "spent_year",
        "year",
    )

    def __init__(
        self,
        id: int,
        operator: str,
        kind: str,
        klass: int,
        public_key: bytes,
        float_account: int,
        settlement_account: int,
        linked_bank: int = 0,
        reverse_waterfall: bool = False,
        parent: int = 0,
        bound_payee: int = 0,
        limits: LimitSet | None = None,
    ) -> None:
        self.id = id
        self.operator = operator
        self.kind = kind  # "personal", "merchant" or "sub"
        self.klass = klass
        self.public_key = public_key
        self.key_version = 1
        self.float_account = float_account
        self.settlement_account = settlement_account
        self.linked_bank = linked_bank
        self.reverse_waterfall = reverse_waterfall
        self.parent = parent
        self.bound_payee = bound_payee
        self.limits = limits
        self.loan_account = 0  # the receivable of the loan being repaid (the mandate), or 0
        self.loan_book = 0  # the lender's loan book, debited as the loan is repaid
        self.loan_share_bp = 0  # the share of each incoming payment that repays it, in 1/10,000
        self.day = 0  # day number (China Standard Time) of spent_day
        self.spent_day = 0
        self.year = 0
        self.spent_year = 0


class OpenWallet:
    """Create a wallet's account and register the wallet, atomically."""

    __slots__ = ("account", "wallet")

    def __init__(self, account: Account, wallet: Wallet) -> None:
        self.account = account
        self.wallet = wallet

    @property
    def id(self) -> int:
        return self.account.id

    @property
    def seq(self) -> int:
        return self.account.seq

    @property
    def timestamp(self) -> int:
        return self.account.timestamp


class UpdateWallet:
    """Change a wallet: class (0 = unchanged), key (b"" = unchanged), reverse waterfall (-1 =
    unchanged), linked bank account (-1 = unchanged). ``reason`` goes into the journal.

    A non-zero ``close_id`` closes a sub-wallet instead, returning its balance to the parent in a
    transfer derived from that id (so a retried close is answered, not repeated)."""

    __slots__ = (
        "close_id",
        "id",
        "klass",
        "linked_bank",
        "public_key",
        "reason",
        "reverse_waterfall",
    )

    def __init__(
        self,
        id: int,
        klass: int = 0,
        public_key: bytes = b"",
        reverse_waterfall: int = -1,
        linked_bank: int = -1,
        reason: str = "",
        close_id: int = 0,
    ) -> None:
        self.id = id
        self.close_id = close_id
        self.klass = klass
        self.public_key = public_key
        self.reverse_waterfall = reverse_waterfall
        self.linked_bank = linked_bank
        self.reason = reason


class Disbursement:
    """Lend e-CNY from the operator's float to a wallet the operator runs, and set the wallet's
    repayment mandate, in one step (see ``ledger.credit.loans``).

    ``loan_account`` is the loan's receivable (a fresh account of the operator with
    credits_must_not_exceed_debits): debited by the principal and ``fee``, credited by each
    repayment, so its balance is what the borrower owes and can never be repaid twice over.
    ``share_bp`` of each payment the wallet receives repays the loan until it is repaid.
    ``terms`` (the borrower's signed acceptance among them) go into the journal record."""

    __slots__ = (
        "book",
        "fee",
        "id",
        "income",
        "loan_account",
        "principal",
        "share_bp",
        "terms",
        "wallet",
    )

    def __init__(
        self,
        loan_account: int,
        wallet: int,
        book: int,
        income: int,
        principal: int,
        fee: int,
        share_bp: int,
        terms: dict[str, object],
    ) -> None:
        self.id = loan_account
        self.loan_account = loan_account
        self.wallet = wallet
        self.book = book
        self.income = income
        self.principal = principal
        self.fee = fee
        self.share_bp = share_bp
        self.terms = terms


class AuditRecord:
    """A fact for the journal that moves no money (e.g. who looked up a wallet's owner, why)."""

    __slots__ = ("id", "payload", "type")

    def __init__(self, type: str, payload: dict[str, object]) -> None:
        self.type = type
        self.payload = payload
        self.id = 0


class ActivateLimits:
    """Make a limits version the one in force; the journal records it, so replays agree."""

    __slots__ = ("classes", "id", "version")

    def __init__(self, version: str, classes: dict[int, LimitSet]) -> None:
        self.version = version
        self.classes = classes
        self.id = 0


# --- extensions: rows committed with a transfer, and cancelled ids -------------------------------


RESULT_PLACEHOLDER: Final = "__RESULT__"


class Attachment:
    """A row another component (the merchant API) wants inserted in the same database
    transaction as a transfer's outcome: the transactional outbox. ``when`` is "ok" (the transfer
    was accepted, or the tombstone recorded) or "rejected" (its rejection was recorded). Rows are
    inserted once, by the committer, never for a replay. ``RESULT_PLACEHOLDER`` in a text value
    becomes the outcome's result code ("ok", "exceeds_balance_cap", ...)."""

    __slots__ = ("columns", "table", "values", "when")

    def __init__(
        self, table: str, columns: tuple[str, ...], values: tuple, when: str = "ok"
    ) -> None:
        assert when in ("ok", "rejected")
        self.table = table
        self.columns = columns
        self.values = values
        self.when = when


class CancelTransferId:
    """Tombstone an unused transfer id, for good; ``reason`` is kept with it."""

    __slots__ = ("attachments", "id", "reason")

    def __init__(self, id: int, reason: str, attachments: list[Attachment] | None = None) -> None:
        self.id = id
        self.reason = reason
        self.attachments = attachments
