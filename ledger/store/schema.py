"""Tables (SQLModel over SQLAlchemy). The schema itself is created by Alembic migrations.

Journal tables (``journal_entries``, ``checkpoints``, ``rejected_transfers``) are append-only:
database triggers refuse UPDATE and DELETE. ``accounts`` holds the writer's balances as of the
last committed batch; ``merkle_tiles`` is an index of complete-subtree hashes; ``account_days``
holds each account's flows per day. All three are derived from the journal and checked against
it by ``ledger verify``.

Ids are 16 big-endian bytes. Accounts also get a compact integer ``n`` (creation order), which is
what the journal's history indexes hold: integer keys keep those indexes small and fast.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, SmallInteger, String, text
from sqlmodel import Field, SQLModel

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid (no second index) when the column
# type is spelled INTEGER; BIGINT everywhere else.
RowId = BigInteger().with_variant(Integer(), "sqlite")


class Meta(SQLModel, table=True):
    """Ledger identity: origin, public key, creation time."""

    __tablename__ = "meta"
    key: str = Field(sa_column=Column(String(64), primary_key=True))
    value: str = Field(sa_column=Column(String(512), nullable=False))


class AccountRow(SQLModel, table=True):
    __tablename__ = "accounts"
    n: int = Field(sa_column=Column(RowId, primary_key=True, autoincrement=False))
    id: bytes = Field(sa_column=Column(LargeBinary(16), nullable=False, unique=True))
    ledger: int = Field(sa_column=Column(Integer, nullable=False))
    code: int = Field(sa_column=Column(Integer, nullable=False))
    flags: int = Field(sa_column=Column(Integer, nullable=False))
    owner: str = Field(sa_column=Column(String(64), nullable=False))
    operator: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    debits_pending: int = Field(sa_column=Column(BigInteger, nullable=False))
    debits_posted: int = Field(sa_column=Column(BigInteger, nullable=False))
    credits_pending: int = Field(sa_column=Column(BigInteger, nullable=False))
    credits_posted: int = Field(sa_column=Column(BigInteger, nullable=False))
    timestamp: int = Field(sa_column=Column(BigInteger, nullable=False))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))


class JournalEntryRow(SQLModel, table=True):
    """One row per log entry. ``body`` is the canonical entry (ledger.entry); the other columns
    index it. ``balances`` packs both accounts' balances right after the entry, so a balance as
    of any sequence number is one index lookup."""

    __tablename__ = "journal_entries"
    __table_args__ = (
        Index("journal_entries_ref", "ref_id", "kind", unique=True),
        Index("journal_entries_debit", "debit_n", "seq"),
        Index("journal_entries_credit", "credit_n", "seq"),
        Index(
            "journal_entries_pending_ref",
            "pending_id",
            sqlite_where=text("pending_id IS NOT NULL"),
            postgresql_where=text("pending_id IS NOT NULL"),
        ),
        Index(
            "journal_entries_pending",
            "seq",
            sqlite_where=text("kind = 2 AND (flags & 2) = 2"),
            postgresql_where=text("kind = 2 AND (flags & 2) = 2"),
        ),
        Index(
            "journal_entries_records",
            "flags",
            "seq",
            sqlite_where=text("kind = 5"),
            postgresql_where=text("kind = 5"),
        ),
    )
    seq: int = Field(sa_column=Column(RowId, primary_key=True, autoincrement=False))
    kind: int = Field(sa_column=Column(SmallInteger, nullable=False))
    ref_id: bytes = Field(sa_column=Column(LargeBinary(16), nullable=False))
    pending_id: bytes | None = Field(default=None, sa_column=Column(LargeBinary(16)))
    debit_n: int | None = Field(default=None, sa_column=Column(BigInteger))
    credit_n: int | None = Field(default=None, sa_column=Column(BigInteger))
    flags: int = Field(sa_column=Column(Integer, nullable=False))
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    balances: bytes | None = Field(default=None, sa_column=Column(LargeBinary(64)))


class CheckpointRow(SQLModel, table=True):
    __tablename__ = "checkpoints"
    size: int = Field(sa_column=Column(RowId, primary_key=True, autoincrement=False))
    root: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    timestamp: int = Field(sa_column=Column(BigInteger, nullable=False))
    signature: bytes = Field(sa_column=Column(LargeBinary(64), nullable=False))


class RejectedTransferRow(SQLModel, table=True):
    """State-dependent rejections, so that a replayed id returns its original result."""

    __tablename__ = "rejected_transfers"
    id: bytes = Field(sa_column=Column(LargeBinary(16), primary_key=True))
    result: int = Field(sa_column=Column(SmallInteger, nullable=False))
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    detail: str | None = Field(default=None, sa_column=Column(String(512)))


class MerkleTileRow(SQLModel, table=True):
    __tablename__ = "merkle_tiles"
    level: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    hashes: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class AccountDayRow(SQLModel, table=True):
    """An account's flows on one China Standard Time day (see ``ledger.daily``): derived from
    the journal in each batch's transaction, checked against it by ``ledger verify``."""

    __tablename__ = "account_days"
    account_n: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    day: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    takings_fen: int = Field(sa_column=Column(BigInteger, nullable=False))
    payments: int = Field(sa_column=Column(BigInteger, nullable=False))
    refunds_fen: int = Field(sa_column=Column(BigInteger, nullable=False))
    inflow_fen: int = Field(sa_column=Column(BigInteger, nullable=False))
    outflow_fen: int = Field(sa_column=Column(BigInteger, nullable=False))
    net_fen: int = Field(sa_column=Column(BigInteger, nullable=False))


class ApiKeyRow(SQLModel, table=True):
    """API credentials. Only a SHA-256 of the secret is kept; the key is shown once."""

    __tablename__ = "api_keys"
    id: str = Field(sa_column=Column(String(32), primary_key=True))
    secret_hash: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    role: str = Field(sa_column=Column(String(32), nullable=False))
    operator: str = Field(sa_column=Column(String(64), nullable=False))
    name: str = Field(sa_column=Column(String(128), nullable=False))
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    revoked_at: int | None = Field(default=None, sa_column=Column(BigInteger))


class WalletRow(SQLModel, table=True):
    """The writer's wallet state as of the last committed batch (derived from the journal's
    wallet records and payments; ``ledger verify`` recomputes the keys and classes)."""

    __tablename__ = "wallets"
    id: bytes = Field(sa_column=Column(LargeBinary(16), primary_key=True))
    operator: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    kind: str = Field(sa_column=Column(String(16), nullable=False))
    wallet_class: int = Field(sa_column=Column(SmallInteger, nullable=False))
    public_key: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    key_version: int = Field(sa_column=Column(Integer, nullable=False))
    linked_bank: bytes | None = Field(default=None, sa_column=Column(LargeBinary(16)))
    reverse_waterfall: int = Field(sa_column=Column(SmallInteger, nullable=False))
    parent: bytes | None = Field(default=None, sa_column=Column(LargeBinary(16), index=True))
    bound_payee: bytes | None = Field(default=None, sa_column=Column(LargeBinary(16)))
    limits: str | None = Field(default=None, sa_column=Column(String(256)))
    float_account: bytes = Field(sa_column=Column(LargeBinary(16), nullable=False))
    settlement_account: bytes = Field(sa_column=Column(LargeBinary(16), nullable=False))
    day: int = Field(sa_column=Column(Integer, nullable=False))
    spent_day: int = Field(sa_column=Column(BigInteger, nullable=False))
    year: int = Field(sa_column=Column(Integer, nullable=False))
    spent_year: int = Field(sa_column=Column(BigInteger, nullable=False))
    loan_account: bytes | None = Field(default=None, sa_column=Column(LargeBinary(16)))
    loan_book: bytes | None = Field(default=None, sa_column=Column(LargeBinary(16)))
    loan_share_bp: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default="0")
    )


class KycRecordRow(SQLModel, table=True):
    """An operator's know-your-customer record for a wallet: name, ID number, phone, encrypted
    at rest with AES-GCM. The journal never holds any of it."""

    __tablename__ = "kyc_records"
    wallet_id: bytes = Field(sa_column=Column(LargeBinary(16), primary_key=True))
    operator: str = Field(sa_column=Column(String(64), nullable=False))
    nonce: bytes = Field(sa_column=Column(LargeBinary(12), nullable=False))
    ciphertext: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at: int = Field(sa_column=Column(BigInteger, nullable=False))


JOURNAL_TABLES = ("journal_entries", "checkpoints", "rejected_transfers")
