"""The e-CNY model as operations: issuance, bank accounts, wallets, top-ups, signed payments.

Everything here turns a request into engine operations and submits them through the one writer;
nothing here writes balances. Payment signatures are checked here, before the writer: on the
event loop for up to ``VERIFY_INLINE_MAX`` payments whose payers' keys are at hand, otherwise on
a thread pool (PyNaCl releases the GIL, so two cores verify in parallel); the engine then
checks, in sequence, that the key version is still current and the signature not yet expired.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from ledger import signing
from ledger.domain import (
    CURRENCIES,
    Account,
    AccountFlags,
    ActivateLimits,
    Attachment,
    AuditRecord,
    LimitSet,
    OpenWallet,
    Result,
    Transfer,
    TransferFlags,
    UpdateWallet,
    Wallet,
)
from ledger.engine import (
    OP_ACTIVATE_LIMITS,
    OP_CREATE_ACCOUNTS,
    OP_CREATE_TRANSFERS,
    OP_OPEN_WALLETS,
    OP_RECORDS,
    OP_UPDATE_WALLETS,
    OpResult,
    leg_id,
)
from ledger.entry import canonical_json
from ledger.service import Ledger
from ledger.wallets import codes, limits
from ledger.wallets.kyc import KycStore

CNY: Final = CURRENCIES["CNY"]
NAMESPACE: Final = uuid.UUID("5f0c4c1e-8f1a-4a55-9a31-0e6d2c8b7a10")
CENTRAL_BANK: Final = "central_bank"
DR_LIMIT: Final = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
VERIFY_THREADS: Final = 2
VERIFY_INLINE_MAX: Final = 128
"""Payments verified on the event loop itself, one after another (about 50 µs each, so the loop
waits at most ~6 ms): the hops to the pool's threads and back, and the GIL passed between them
and the loop around every verification, cost more under load (2026-12-06, batches of 100 over
HTTP on SQLite, alternating runs: 18,206 and 17,812 payments/s verified on the loop against
16,525 and 15,625 through the threads, whose workers took 75-77 µs of CPU a payment against
69). Bigger batches are split over ``VERIFY_THREADS`` threads, off the loop."""
PAYMENT_KINDS: Final = {"payment": codes.PAYMENT, "sub_wallet_fund": codes.SUB_WALLET_FUND}
KYC_REQUIRED: Final = {4: ("phone",), 3: ("phone", "name", "id_number"), 2: ("name", "id_number")}
"""What each class needs to know of the owner (class 2 also needs a linked bank account; class 1
means verified in person, which the operator attests when it opens or upgrades the wallet)."""


def system_id(name: str) -> int:
    """Stable ids for the accounts the model itself needs (e.g. an operator's float)."""
    return uuid.uuid5(NAMESPACE, name).int


CB_RESERVE_SOURCE_ID: Final = system_id("central_bank/reserve_source")


@dataclass(frozen=True)
class OperatorAccounts:
    reserves: int
    float: int
    settlement: int

    @classmethod
    def of(cls, operator: str) -> OperatorAccounts:
        return cls(
            system_id(f"{operator}/reserves"),
            system_id(f"{operator}/float"),
            system_id(f"{operator}/settlement"),
        )


@dataclass
class SignedPayment:
    """A payment as its payer signed it (see ``ledger.signing``)."""

    id: int
    payer: int
    payee: int
    amount: int
    expires_at_ms: int
    key_version: int
    signature: bytes
    kind: str = "payment"
    currency: str = "CNY"
    metadata: dict[str, str] = field(default_factory=dict)
    attempt: bool = False
    """A failure leaves the id free (payment orders; see TransferFlags.ATTEMPT)."""
    attachments: list[Attachment] | None = None
    """Rows to commit with the outcome (the merchant API's transitions and events)."""

    def authorization(self) -> bytes:
        return signing.Authorization(self.key_version, self.expires_at_ms, self.signature).encode()


@dataclass
class Submitted:
    """What was handed to the writer, and the future of its answer (the engine writes each
    item's ``seq`` and ``timestamp`` onto the items)."""

    items: list
    future: Future[OpResult]

    def result(self, timeout_s: float | None = None) -> OpResult:
        return self.future.result(timeout_s)


class WalletError(Exception):
    """A request the wallet layer refuses before it reaches the writer."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param


class Wallets:
    def __init__(self, ledger: Ledger, kyc: KycStore, limits_version: str | None = None) -> None:
        self.ledger = ledger
        self.kyc = kyc
        self._limits = limits.load(limits_version)  # fails at start on a bad configuration
        self._pool = ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="ledger-verify")
        self._ready = False
        self._setup_lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _submit(self, op: int, items: list, operator: str | None) -> Submitted:
        self._setup()
        return Submitted(items, self.ledger.submit(op, items, operator))

    def wallet(self, wallet_id: int) -> Wallet | None:
        account = self.ledger.account(wallet_id)
        return account.wallet if account is not None else None

    # -- central bank ----------------------------------------------------------------------------

    def _setup(self) -> None:
        """Before the first e-CNY operation: the central bank's account, and the configured
        limits in force (recorded in the journal only when they change). Lazy, so a ledger used
        without wallets keeps a log of its own entries only."""
        if self._ready:
            return
        with self._setup_lock:
            if self._ready:
                return
            name, classes = self._limits
            source = Account(
                CB_RESERVE_SOURCE_ID, CNY, codes.CB_RESERVE_SOURCE, 0, "", CENTRAL_BANK
            )
            self.ledger.submit(OP_CREATE_ACCOUNTS, [source], None).result()
            self.ledger.submit(OP_ACTIVATE_LIMITS, [ActivateLimits(name, classes)], None).result()
            self._ready = True

    def onboard_operator(self, operator: str) -> Submitted:
        """An authorized operator's reserves at the central bank, its e-CNY float and its own
        side of customers' bank deposits."""
        ids = OperatorAccounts.of(operator)
        return self._submit(
            OP_CREATE_ACCOUNTS,
            [
                Account(ids.reserves, CNY, codes.CB_RESERVES, DR_LIMIT, operator, CENTRAL_BANK),
                Account(ids.float, CNY, codes.OPERATOR_FLOAT, DR_LIMIT, operator, operator),
                Account(ids.settlement, CNY, codes.BANK_SETTLEMENT, 0, operator, operator),
            ],
            None,
        )

    def deposit_reserves(self, transfer_id: int, operator: str, amount: int) -> Submitted:
        reserves = OperatorAccounts.of(operator).reserves
        t = Transfer(
            transfer_id, CB_RESERVE_SOURCE_ID, reserves, amount, CNY, codes.RESERVE_DEPOSIT
        )
        return self._submit(OP_CREATE_TRANSFERS, [t], None)

    def issue(self, transfer_id: int, operator: str, amount: int) -> Submitted:
        """Issue e-CNY to an operator against its reserves."""
        ids = OperatorAccounts.of(operator)
        t = Transfer(transfer_id, ids.reserves, ids.float, amount, CNY, codes.ISSUE)
        return self._submit(OP_CREATE_TRANSFERS, [t], None)

    def redeem_at_central_bank(self, transfer_id: int, operator: str, amount: int) -> Submitted:
        ids = OperatorAccounts.of(operator)
        t = Transfer(transfer_id, ids.float, ids.reserves, amount, CNY, codes.CB_REDEEM)
        return self._submit(OP_CREATE_TRANSFERS, [t], None)

    # -- bank accounts (bank money at an operator) -----------------------------------------------

    def open_bank_account(self, operator: str, account_id: int, owner: str) -> Submitted:
        account = Account(account_id, CNY, codes.BANK_DEPOSIT, DR_LIMIT, owner, operator)
        return self._submit(OP_CREATE_ACCOUNTS, [account], operator)

    def cash_deposit(
        self, operator: str, transfer_id: int, account_id: int, amount: int
    ) -> Submitted:
        settlement = OperatorAccounts.of(operator).settlement
        t = Transfer(transfer_id, settlement, account_id, amount, CNY, codes.CASH_DEPOSIT)
        return self._submit(OP_CREATE_TRANSFERS, [t], operator)

    # -- wallets -----------------------------------------------------------------------------------

    def wallet_to_open(
        self,
        operator: str,
        wallet_id: int,
        *,
        kind: str,
        klass: int,
        public_key: bytes,
        kyc: dict[str, str],
        linked_bank: int = 0,
        reverse_waterfall: bool = False,
    ) -> OpenWallet:
        """Check one personal or merchant wallet's request (raises ``WalletError``) and build
        what ``open_wallets`` hands the writer. KYC goes to the operator's encrypted store (after
        the wallet exists); the journal gets only the pseudonymous wallet id."""
        check_kyc(klass, kyc, linked_bank)
        if reverse_waterfall and not linked_bank:
            raise WalletError("linked_bank_required", "reverse waterfall needs a bank account")
        ids = OperatorAccounts.of(operator)
        code = codes.WALLET_KIND_CODES[kind]
        account = Account(wallet_id, CNY, code, DR_LIMIT, "", operator)
        wallet = Wallet(
            wallet_id, operator, kind, klass, public_key, ids.float, ids.settlement, linked_bank,
            reverse_waterfall,
        )  # fmt: skip
        return OpenWallet(account, wallet)

    def open_wallets(self, operator: str, items: list[OpenWallet]) -> Submitted:
        """Open checked wallets in one writer batch, each answered on its own."""
        return self._submit(OP_OPEN_WALLETS, items, operator)

    def open_sub_wallet(
        self,
        parent_id: int,
        sub_id: int,
        *,
        public_key: bytes,
        bound_payee: int,
        sub_limits: LimitSet,
    ) -> Submitted:
        """A sub-wallet the owner pushes to a merchant app: its own key, its own smaller limits,
        payments only to that merchant (or back to the parent). The caller has checked the
        parent's signature on the request."""
        parent = self.wallet(parent_id)
        if parent is None:
            raise WalletError("wallet_not_found", "no such wallet", "wallet_id")
        account = Account(sub_id, CNY, codes.SUB_WALLET, DR_LIMIT, "", parent.operator)
        wallet = Wallet(
            sub_id, parent.operator, "sub", parent.klass, public_key, parent.float_account,
            parent.settlement_account, 0, False, parent_id, bound_payee, sub_limits,
        )  # fmt: skip
        return self._submit(OP_OPEN_WALLETS, [OpenWallet(account, wallet)], parent.operator)

    def update_wallet(self, operator: str | None, update: UpdateWallet) -> Submitted:
        return self._submit(OP_UPDATE_WALLETS, [update], operator)

    def top_up(self, operator: str, transfer_id: int, wallet_id: int, amount: int) -> Submitted:
        """Bank money for e-CNY at the wallet's operator: two legs that succeed together. The
        e-CNY leg carries the request's id; the bank leg's id is derived from it."""
        wallet = self._require(wallet_id)
        if not wallet.linked_bank:
            raise WalletError("linked_bank_required", "the wallet has no linked bank account")
        bank_leg = Transfer(
            leg_id(transfer_id, 10), wallet.linked_bank, wallet.settlement_account, amount, CNY,
            codes.TOP_UP_BANK, TransferFlags.LINKED,
        )  # fmt: skip
        ecny_leg = Transfer(
            transfer_id, wallet.float_account, wallet_id, amount, CNY, codes.TOP_UP_ECNY
        )
        return self._submit(OP_CREATE_TRANSFERS, [bank_leg, ecny_leg], wallet.operator)

    def redeem(self, payment: SignedPayment) -> Submitted:
        """e-CNY back to bank money: the wallet signs a payment to its operator's float; the
        operator credits the linked bank account in the same breath."""
        wallet = self._require(payment.payer)
        if not wallet.linked_bank:
            raise WalletError("linked_bank_required", "the wallet has no linked bank account")
        if payment.payee != wallet.float_account:
            raise WalletError("invalid_payee", "a redemption pays the operator's float")
        self._verify(payment)
        ecny_leg = Transfer(
            payment.id, payment.payer, wallet.float_account, payment.amount, CNY,
            codes.REDEEM_ECNY, TransferFlags.LINKED, authorization=payment.authorization(),
        )  # fmt: skip
        ecny_leg.attachments = payment.attachments
        bank_leg = Transfer(
            leg_id(payment.id, 11), wallet.settlement_account, wallet.linked_bank,
            payment.amount, CNY, codes.REDEEM_BANK,
        )  # fmt: skip
        return self._submit(OP_CREATE_TRANSFERS, [ecny_leg, bank_leg], wallet.operator)

    def _require(self, wallet_id: int) -> Wallet:
        wallet = self.wallet(wallet_id)
        if wallet is None:
            raise WalletError("wallet_not_found", "no such wallet", "wallet_id")
        return wallet

    # -- signed payments ---------------------------------------------------------------------------

    def _verify(self, p: SignedPayment) -> None:
        """Raise WalletError unless the payer's current key signed exactly this payment."""
        key = self.ledger.wallet_key(p.payer)
        if key is not None and key[0] != p.key_version:
            key = self.ledger.wallet_key(p.payer, fresh=True)
        if key is None:
            raise WalletError("wallet_not_found", "no such wallet", "wallet_id")
        version, public_key = key
        if p.key_version != version:
            raise WalletError("wallet_key_rotated", "signed with a key the wallet no longer uses")
        try:
            signing.verify_payment_signature(
                public_key, p.signature, p.id, p.payer, p.payee, p.amount, p.currency,
                p.expires_at_ms,
            )  # fmt: skip
        except signing.SignatureError:
            raise WalletError(
                "signature_invalid", "the payer's signature does not verify"
            ) from None

    def transfer_for(self, p: SignedPayment) -> Transfer:
        if p.kind not in PAYMENT_KINDS:
            raise WalletError("invalid_kind", f"kind is one of {sorted(PAYMENT_KINDS)}", "kind")
        metadata = canonical_json(p.metadata) if p.metadata else b""
        flags = TransferFlags.ATTEMPT if p.attempt else 0
        t = Transfer(
            p.id, p.payer, p.payee, p.amount, CURRENCIES[p.currency], PAYMENT_KINDS[p.kind],
            flags, authorization=p.authorization(), metadata=metadata,
        )  # fmt: skip
        t.attachments = p.attachments
        return t

    def check_payments(self, payments: list[SignedPayment]) -> list[WalletError | None]:
        """Verify signatures, in two threads when there are many; one answer per payment."""
        if len(payments) <= VERIFY_INLINE_MAX:
            return self._check(payments)
        half = (len(payments) + 1) // 2
        parts = self._pool.map(self._check, [payments[:half], payments[half:]])
        return [e for part in parts for e in part]

    def _check(self, payments: list[SignedPayment]) -> list[WalletError | None]:
        out: list[WalletError | None] = []
        for p in payments:
            try:
                self._verify(p)
                out.append(None)
            except WalletError as exc:
                out.append(exc)
        return out

    async def pay(
        self, payments: list[SignedPayment], *, receipts: bool = False
    ) -> tuple[list[Transfer], OpResult]:
        """Verify, then submit what verified; answer for every payment, in order. Refused
        signatures are per-item results, like the engine's own rejections. ``receipts``: the
        answer proves the accepted entries (see ``Ledger.submit``)."""
        loop = asyncio.get_running_loop()
        if not self._ready:
            await loop.run_in_executor(None, self._setup)
        # Up to VERIFY_INLINE_MAX payments are verified on the event loop (cheaper than hops to
        # threads and back) when their payers' keys are at hand; a key to fetch from the writer
        # would make the loop, and every other request of this worker, wait for it.
        inline = len(payments) <= VERIFY_INLINE_MAX and all(
            self.ledger.knows_wallet_key(p.payer, p.key_version) for p in payments
        )
        if inline:
            errors = self.check_payments(payments)
        else:
            errors = await loop.run_in_executor(None, self.check_payments, payments)
        transfers = [self.transfer_for(p) for p in payments]
        valid = [t for t, e in zip(transfers, errors, strict=True) if e is None]
        result = OpResult([0] * len(payments))
        accepted = (
            await self.ledger.execute(OP_CREATE_TRANSFERS, valid, None, receipts=receipts)
            if valid
            else None
        )
        j = 0
        for i, error in enumerate(errors):
            if error is not None:
                result.codes[i] = _ERROR_RESULTS.get(error.code, Result.SIGNATURE_REQUIRED)
                continue
            assert accepted is not None
            result.codes[i] = accepted.codes[j]
            if j in accepted.replayed:
                result.replayed.add(i)
            if j in accepted.details:
                result.details[i] = accepted.details[j]
            j += 1
        if accepted is not None:
            result.tree_size, result.committed = accepted.tree_size, accepted.committed
        return transfers, result

    # -- controllable anonymity ------------------------------------------------------------------

    def reveal(
        self, wallet_id: int, *, requester: str, legal_basis: str, case_reference: str
    ) -> dict[str, str]:
        """Who owns a wallet. The look-up, its requester and legal basis are written to the
        journal first; only then is the record decrypted."""
        if not legal_basis.strip():
            raise WalletError("legal_basis_required", "state the legal basis", "legal_basis")
        self._require(wallet_id)
        record = AuditRecord(
            "kyc_revealed",
            {
                "wallet": str(uuid.UUID(int=wallet_id)),
                "requester": requester,
                "legal_basis": legal_basis,
                "case_reference": case_reference,
            },
        )
        outcome = self._submit(OP_RECORDS, [record], None).result()
        if outcome.codes != [0]:
            raise WalletError("wallet_not_found", "no such wallet", "wallet_id")
        data = self.kyc.get(wallet_id)
        if data is None:
            raise WalletError("kyc_not_found", "the operator holds no KYC record for this wallet")
        return data


_ERROR_RESULTS: Final = {
    "wallet_key_rotated": Result.WALLET_KEY_ROTATED,
    "signature_invalid": Result.SIGNATURE_INVALID,
    "wallet_not_found": Result.DEBIT_ACCOUNT_NOT_FOUND,
    "invalid_kind": Result.SIGNATURE_INVALID,
}


def check_kyc(klass: int, kyc: dict[str, str], linked_bank: int) -> None:
    if klass not in (1, 2, 3, 4):
        raise WalletError("wallet_class_invalid", "wallet classes are 1 to 4", "class")
    missing = [f for f in KYC_REQUIRED.get(klass, ()) if not kyc.get(f)]
    if missing:
        raise WalletError(
            "kyc_incomplete",
            f"a class {klass} wallet needs the owner's {', '.join(missing)}",
            f"kyc.{missing[0]}",
        )
    if klass <= 2 and not linked_bank:
        raise WalletError(
            "linked_bank_required", f"a class {klass} wallet needs a linked bank account"
        )
