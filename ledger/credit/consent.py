"""Consent to credit assessment, and the reads it allows (PIPL-style).

A borrower (a wallet, signing its own request) grants a lender (an operator) a consent for one
purpose, over a scope (its wallet and sub-wallets, a trailing window of days) until an expiry;
it may revoke it at any time. Consents are journal records attached to the borrower's wallet
(``credit_consent_granted``, ``credit_consent_revoked``): signed and append-only like every
entry, and separate from any other consent. A consent's state is the fold of those records, so
it survives restarts and ``ledger verify`` covers it.

Without a live consent for the asking lender and the stated purpose, no feature of the borrower
is computed. Every read is first written to the journal (``credit_data_read``: who, which
features, under which consent); only then are the features computed, and only aggregates are
returned, never transactions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Final

from ledger.credit.features import DAY_NS, LONGEST_DAYS, PAYER_DAYS, Flow, features
from ledger.daily import cst_day
from ledger.domain import AuditRecord, TransferFlags
from ledger.engine import OP_RECORDS, RECORD_AUDIT
from ledger.entry import RecordEntry
from ledger.service import Ledger
from ledger.store.queries import Reader
from ledger.wallets import codes
from ledger.wallets.service import OperatorAccounts

PURPOSE_CREDIT: Final = "credit_assessment"
PURPOSES: Final = frozenset({PURPOSE_CREDIT})
GRANTED: Final = "credit_consent_granted"
REVOKED: Final = "credit_consent_revoked"
READ: Final = "credit_data_read"
WINDOW_DAYS_MAX: Final = 730
CONSENT_DAYS_MAX: Final = 366
_SKIP_FLAGS: Final = int(TransferFlags.PENDING | TransferFlags.VOID_PENDING)


class ConsentError(Exception):
    """A consent or a read refused: ``status`` and ``code`` for the API's error shape."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


@dataclass(slots=True)
class Consent:
    id: int
    borrower: int
    lender: str
    purpose: str
    accounts: list[int]
    window_days: int
    expires_at_ms: int
    granted_ms: int
    revoked_ms: int | None = None
    reads: int = 0
    journal: list[int] = field(default_factory=list)
    """Sequence numbers of the records that made this state."""

    def status(self, now_ms: int) -> str:
        if self.revoked_ms is not None:
            return "revoked"
        return "expired" if now_ms >= self.expires_at_ms else "active"

    def view(self, now_ms: int) -> dict[str, Any]:
        return {
            "id": str(uuid.UUID(int=self.id)),
            "borrower": str(uuid.UUID(int=self.borrower)),
            "lender": self.lender,
            "purpose": self.purpose,
            "accounts": [str(uuid.UUID(int=a)) for a in self.accounts],
            "window_days": self.window_days,
            "expires_at_ms": self.expires_at_ms,
            "granted_ms": self.granted_ms,
            "revoked_ms": self.revoked_ms,
            "status": self.status(now_ms),
            "reads": self.reads,
            "journal_seqs": self.journal,
        }


class CreditData:
    """Consents and the feature reads they allow, on a running ledger."""

    def __init__(self, ledger: Ledger, reader: Reader) -> None:
        self.ledger, self.reader = ledger, reader
        self._borrowers_of: dict[str, set[int]] = {}  # lender -> borrowers that granted it one
        self._seen_seq = 0

    def now_ms(self) -> int:
        """The ledger's clock: consents expire, and windows end, by the time entries carry."""
        return self.ledger.clock_ns() // 1_000_000

    def _account_n(self, wallet_id: int) -> int:
        account = self.ledger.account(wallet_id)
        if account is None or account.wallet is None:
            raise ConsentError(404, "wallet_not_found", "no such wallet", "borrower")
        return account.n

    async def record(self, borrower: int, type_: str, payload: dict[str, object]) -> None:
        """Journal a record on the borrower's wallet (its history holds it)."""
        record = AuditRecord(type_, {"wallet": str(uuid.UUID(int=borrower)), **payload})
        result = await self.ledger.execute(OP_RECORDS, [record])
        if result.codes != [0]:
            raise ConsentError(404, "wallet_not_found", "no such wallet", "borrower")

    def records(self, borrower: int, types: frozenset[str]) -> list[tuple[int, RecordEntry]]:
        """The borrower's journal records of these types, oldest first."""
        return self.reader.records(self._account_n(borrower), types)

    # -- consents ---------------------------------------------------------------------------

    def consents(self, borrower: int) -> dict[int, Consent]:
        """Every consent the borrower granted, with its state, from the journal."""
        found: dict[int, Consent] = {}
        records = self.reader.records(
            self._account_n(borrower), frozenset({GRANTED, REVOKED, READ})
        )
        for seq, rec in records:
            data = rec.data()
            cid = uuid.UUID(str(data["consent"])).int
            at_ms = rec.timestamp // 1_000_000
            if rec.type == GRANTED:
                found[cid] = Consent(
                    cid, borrower, str(data["lender"]), str(data["purpose"]),
                    [uuid.UUID(str(a)).int for a in data["accounts"]],  # type: ignore[attr-defined]
                    int(data["window_days"]), int(data["expires_at_ms"]), at_ms,  # type: ignore[call-overload]
                )  # fmt: skip
            elif cid in found:
                consent = found[cid]
                if rec.type == REVOKED and consent.revoked_ms is None:
                    consent.revoked_ms = at_ms
                elif rec.type == READ:
                    consent.reads += 1
            if cid in found:
                found[cid].journal.append(seq)
        return found

    def granted_to(self, lender: str) -> list[Consent]:
        """Every consent granted to ``lender``, of every borrower, ordered by id (what nightly
        re-scoring walks). Grants are learnt from the records index since the last call."""
        for seq, rec in self.reader.records_of_kind((RECORD_AUDIT,), self._seen_seq):
            self._seen_seq = seq
            if rec.type == GRANTED:
                data = rec.data()
                borrower = uuid.UUID(str(data["wallet"])).int
                self._borrowers_of.setdefault(str(data["lender"]), set()).add(borrower)
        out: list[Consent] = []
        for borrower in self._borrowers_of.get(lender, ()):
            out += [c for c in self.consents(borrower).values() if c.lender == lender]
        return sorted(out, key=lambda c: c.id)

    def consent(self, borrower: int, consent_id: int) -> Consent:
        found = self.consents(borrower).get(consent_id)
        if found is None:
            raise ConsentError(404, "consent_not_found", "no such consent", "consent_id")
        return found

    async def grant(
        self,
        borrower: int,
        lender: str,
        purpose: str,
        accounts: list[int],
        window_days: int,
        expires_at_ms: int,
    ) -> Consent:
        mine = self.ledger.account(borrower)
        if mine is None or mine.wallet is None:
            raise ConsentError(404, "wallet_not_found", "no such wallet", "borrower")
        if purpose not in PURPOSES:
            raise ConsentError(
                422, "purpose_invalid", f"the purposes are: {', '.join(sorted(PURPOSES))}",
                "purpose",
            )  # fmt: skip
        if self.ledger.account(OperatorAccounts.of(lender).float) is None:
            raise ConsentError(422, "lender_not_found", "no such operator", "lender")
        covered = accounts or [borrower]
        for account_id in covered:
            other = self.ledger.account(account_id)
            owned = other is not None and other.wallet is not None and (
                account_id == borrower or other.wallet.parent == borrower
            )  # fmt: skip
            if not owned:
                raise ConsentError(
                    422, "account_not_yours",
                    "a consent covers the borrower's own wallet and sub-wallets only", "accounts",
                )  # fmt: skip
        if not 1 <= window_days <= WINDOW_DAYS_MAX:
            raise ConsentError(
                422, "window_invalid", f"window_days is 1..{WINDOW_DAYS_MAX}", "window_days"
            )
        now = self.now_ms()
        if not now < expires_at_ms <= now + CONSENT_DAYS_MAX * 86_400_000:
            raise ConsentError(
                422, "expiry_invalid",
                f"expires_at_ms must be in the future, at most {CONSENT_DAYS_MAX} days ahead",
                "expires_at_ms",
            )  # fmt: skip
        cid = uuid.uuid4().int
        await self.record(
            borrower,
            GRANTED,
            {
                "consent": str(uuid.UUID(int=cid)),
                "lender": lender,
                "purpose": purpose,
                "accounts": [str(uuid.UUID(int=a)) for a in covered],
                "window_days": window_days,
                "expires_at_ms": expires_at_ms,
            },
        )
        return self.consent(borrower, cid)

    async def revoke(self, borrower: int, consent_id: int) -> Consent:
        consent = self.consent(borrower, consent_id)
        if consent.revoked_ms is None:
            await self.record(borrower, REVOKED, {"consent": str(uuid.UUID(int=consent_id))})
        return self.consent(borrower, consent_id)

    # -- reads ------------------------------------------------------------------------------

    def _live(self, borrower: int, consent_id: int, lender: str, purpose: str) -> Consent:
        consent = self.consent(borrower, consent_id)
        if consent.lender != lender:  # another lender's consent is no consent at all
            raise ConsentError(404, "consent_not_found", "no such consent", "consent_id")
        status = consent.status(self.now_ms())
        if status != "active":
            raise ConsentError(403, f"consent_{status}", f"the consent is {status}", "consent_id")
        if purpose != consent.purpose:
            raise ConsentError(
                403, "purpose_not_consented",
                f"the consent is for {consent.purpose}, not {purpose}", "purpose",
            )  # fmt: skip
        return consent

    async def features(
        self, borrower: int, consent_id: int, lender: str, purpose: str
    ) -> dict[str, Any]:
        """The borrower's cash-flow features for ``lender``, if a live consent allows it. The
        read is journaled before anything is computed."""
        consent = self._live(borrower, consent_id, lender, purpose)
        now_ns = self.ledger.clock_ns()
        await self.record(
            borrower,
            READ,
            {
                "consent": str(uuid.UUID(int=consent_id)),
                "lender": lender,
                "purpose": purpose,
                "what": "cash_flow_features",
                "window_days": consent.window_days,
            },
        )
        # nothing older than the consent allows, nor than any feature needs
        today = cst_day(now_ns)
        first_day = today - min(consent.window_days, LONGEST_DAYS) + 1
        payers_since = now_ns - min(consent.window_days, PAYER_DAYS) * DAY_NS
        days: dict[int, list[int]] = {}
        takings: list[Flow] = []
        balance, opened = 0, now_ns
        for account_id in consent.accounts:
            account = self.ledger.account(account_id)
            if account is None:
                continue
            balance += account.credits_posted - account.debits_posted
            opened = min(opened, account.timestamp)
            for day, figures in self.reader.days(account.n, first_day).items():
                if day <= today:
                    summed = days.setdefault(day, [0] * len(figures))
                    for i, value in enumerate(figures):
                        summed[i] += value
            for t in self.reader.transfers_since(account.n, payers_since):
                if (
                    t.credit_account_id == account_id
                    and t.code == codes.PAYMENT
                    and not (t.flags & _SKIP_FLAGS or t.debit_account_id in consent.accounts)
                ):
                    takings.append(Flow(t.timestamp, t.amount, True, t.debit_account_id, t.code))
        values = features(days, takings, now_ns, opened, balance)
        return {
            "borrower": str(uuid.UUID(int=borrower)),
            "consent": str(uuid.UUID(int=consent_id)),
            "as_of_ms": now_ns // 1_000_000,
            "window_days": consent.window_days,
            "features": values,
        }
