"""The engine: applies a batch of operations to the ledger's state, in order. Pure.

Same state + same batch + same timestamp = same results and entries, byte for byte: no I/O, no
clock, no randomness (timestamps come from the sequencer). Expected rejections are result codes;
a broken invariant is a programmer error and fails an ``assert``.

State is complete for every id a batch names: the sequencer prefetches transfers that fell out of
the in-memory cache before it calls ``execute`` (TigerBeetle's prefetch/execute split).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import heapq
import struct
import uuid
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any, Final

from ledger.domain import (
    AMOUNT_MAX,
    AUTHORIZATION_BYTES_MAX,
    BALANCE_MAX,
    ID_MAX,
    LEDGER_CURRENCIES,
    METADATA_BYTES_MAX,
    OWNER_BYTES_MAX,
    RECORDED_RESULTS,
    TOMBSTONE_RESULT,
    Account,
    AccountFlags,
    ActivateLimits,
    AuditRecord,
    CancelTransferId,
    CloseAccount,
    Disbursement,
    LimitSet,
    OpenWallet,
    PendingState,
    Result,
    Transfer,
    TransferFlags,
    UpdateWallet,
    Wallet,
)
from ledger.entry import (
    KIND_ACCOUNT_CLOSED,
    KIND_ACCOUNT_CREATED,
    KIND_PENDING_EXPIRED,
    KIND_RECORD,
    KIND_TRANSFER,
    canonical_json,
)
from ledger.wallets.codes import (
    LOAN_BOOK,
    LOAN_CHARGE,
    LOAN_DISBURSE,
    LOAN_INCOME,
    LOAN_PRINCIPAL,
    LOAN_RECEIVABLE,
    LOAN_REPAYMENT,
    LOAN_REPAYMENT_BOOK,
    LOAN_REVENUE_SHARE,
    PAYMENT,
    REVERSE_WATERFALL_BANK,
    REVERSE_WATERFALL_ECNY,
    SUB_WALLET_RETURN,
    SWEEPING,
    WATERFALL_BANK,
    WATERFALL_ECNY,
)

Op = tuple[int, list, str | None]
"""(operation, items, acting operator). The operator is None for the central bank, which may
debit any account; an operator may only debit accounts it operates."""

OP_CREATE_ACCOUNTS: Final = 1
OP_CREATE_TRANSFERS: Final = 2
OP_CLOSE_ACCOUNTS: Final = 3
OP_OPEN_WALLETS: Final = 4
OP_UPDATE_WALLETS: Final = 5
OP_RECORDS: Final = 6
OP_ACTIVATE_LIMITS: Final = 7
OP_CANCEL_IDS: Final = 8
OP_DISBURSE_LOANS: Final = 9

RECORD_TYPES: Final = {
    "wallet_opened": 1,
    "wallet_updated": 2,
    "limits_activated": 3,
    "loan_disbursed": 5,
    "loan_repaid": 6,
}
"""Record type -> the ``flags`` column of its journal row (audit records use 4)."""
LEG_REVENUE_SHARE: Final = 5
"""Roles of the legs the engine derives from a transfer (see ``leg_id``); 1-4 are waterfalls."""
LEG_REVENUE_SHARE_BOOK: Final = 6
LEG_REPAYMENT_BOOK: Final = 7
LEG_DISBURSE: Final = 12
LEG_DISBURSE_PRINCIPAL: Final = 13
LEG_DISBURSE_FEE: Final = 14
SHARE_BP_MAX: Final = 10_000
RECORD_AUDIT: Final = 4
CST_OFFSET_S: Final = 8 * 3600
"""Daily and yearly limits roll over at midnight China Standard Time (UTC+8)."""
_AUTH = struct.Struct(">BHQ")
AUTHORIZATION_SIZE: Final = _AUTH.size + 64
_CODE = struct.Struct(">BHQQQQ")
CODE_AUTHORIZATION_SIZE: Final = _CODE.size + 64
"""A capture made with a payment code (see ledger.signing): the code id may pay once."""
_LINKED: Final = int(TransferFlags.LINKED)
_PENDING: Final = int(TransferFlags.PENDING)
_POST: Final = int(TransferFlags.POST_PENDING)
_VOID: Final = int(TransferFlags.VOID_PENDING)
_ATTEMPT: Final = int(TransferFlags.ATTEMPT)
_TRANSFER_FLAGS: Final = _LINKED | _PENDING | _POST | _VOID | _ATTEMPT
_RESOLVE: Final = _POST | _VOID
_DR_LIMIT: Final = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CR_LIMIT: Final = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
_CLOSED: Final = int(AccountFlags.CLOSED)
_OK: Final = int(Result.OK)
_BALANCE_FIELDS: Final = [
    attrgetter(f) for f in ("debits_pending", "debits_posted", "credits_pending", "credits_posted")
]
_BEFORE_FIELDS: Final = [itemgetter(i) for i in range(4)]

Balances = tuple[int, int, int, int, int, int, int, int, int, int]
"""Debit and credit account numbers, then the debit account's (dp, dpo, cp, cpo) and the credit
account's, right after an entry."""


@dataclass(slots=True)
class OpResult:
    """Per-item result codes of one operation; ``replayed`` holds indexes answered from a replay."""

    codes: list[int]
    replayed: set[int] = field(default_factory=set)
    details: dict[int, dict[str, object]] = field(default_factory=dict)
    """For rejections by a limit: which limit, its value, what would have been allowed."""
    tree_size: int = 0
    """Set once committed: the size of the first signed checkpoint that includes the batch."""
    committed: Any = None
    """Set once committed: the ``ledger.sequencer.CommittedBatch``, which builds receipts for the
    batch's entries from memory."""


@dataclass(slots=True)
class Outcome:
    """What a batch did: results per operation and everything the journal and store need."""

    results: list[OpResult]
    first_seq: int
    entries: list[tuple[int, object, object]]
    """(kind, object, captured) in log order; captured = flags, a timestamp or Balances."""
    touched: dict[int, Account]
    new_accounts: list[Account]
    rejected: list[Transfer]
    last_timestamp: int
    wallets: list[Wallet] = field(default_factory=list)
    """Wallets whose record changed (opened, updated, mandates): their whole row is written."""
    spent: list[Wallet] = field(default_factory=list)
    """Wallets whose only change is their spending counters (a payment's payer): only those
    are written, by an UPDATE rather than a whole-row upsert."""
    legs: list[int] = field(default_factory=list)
    """Ids of transfers the writer made itself (waterfall legs), for the sequencer's id filter."""


class State:
    """Everything the engine decides from. Owned by the single writer thread."""

    __slots__ = (
        "accounts",
        "expiries",
        "last_timestamp",
        "limits",
        "limits_version",
        "live_pending",
        "next_account_n",
        "next_seq",
        "totals",
        "transfers",
    )

    def __init__(self) -> None:
        self.accounts: dict[int, Account] = {}
        self.transfers: dict[int, Transfer] = {}
        """Accepted and recorded-rejected transfers; a cache whose misses the sequencer fills."""
        self.live_pending: dict[int, Transfer] = {}
        """Pending transfers still holding funds; never evicted."""
        self.expiries: list[tuple[int, int]] = []
        """Heap of (expires_at_ns, pending id)."""
        self.next_seq = 0
        self.next_account_n = 1
        self.last_timestamp = 0
        self.totals = [0, 0, 0, 0]
        """Sum over accounts of (debits_pending, debits_posted, credits_pending, credits_posted)."""
        self.limits: dict[int, LimitSet] = {}
        """Wallet limits by class, as last activated in the journal."""
        self.limits_version = ""

    def find_transfer(self, id: int) -> Transfer | None:
        t = self.transfers.get(id)
        return t if t is not None else self.live_pending.get(id)

    def evict(self, keep: int) -> None:
        """Bound the transfer cache: keep the newest ``keep`` (insertion order), drop the rest.

        Rebuilding the dict once it doubles keeps eviction amortised O(1)."""
        if len(self.transfers) > 2 * keep:
            items = list(self.transfers.items())[-keep:]
            self.transfers = dict(items)


class Engine:
    """Applies operations to a ``State``. One instance per writer."""

    def __init__(self, state: State) -> None:
        self.state = state
        self._undo: list[tuple[int, object, object]] | None = None
        self._operator: str | None = None
        self._clock = 0
        self._entries: list[tuple[int, object, object]] = []
        self._touched: dict[int, Account] = {}
        self._before: dict[int, tuple[int, int, int, int]] = {}
        self._new_accounts: list[Account] = []
        self._rejected: list[Transfer] = []
        self._touched_wallets: dict[int, Wallet] = {}
        self._spent_wallets: dict[int, Wallet] = {}
        self._legs: list[int] = []
        self._detail: dict[str, object] | None = None

    # -- batch ------------------------------------------------------------------------------------

    def execute(self, ops: list[Op], timestamp: int) -> Outcome:
        """Apply ``ops`` in order. ``timestamp`` (ns) must exceed the state's last timestamp."""
        state = self.state
        assert timestamp > state.last_timestamp, "timestamps must increase"
        self._clock = timestamp
        first_seq = state.next_seq
        self._entries, self._touched, self._before = [], {}, {}
        self._new_accounts, self._rejected = [], []
        self._touched_wallets, self._spent_wallets, self._legs = {}, {}, []
        self._expire_due(timestamp)
        results = []
        for op, items, operator in ops:
            self._operator = operator
            if op == OP_CREATE_TRANSFERS:
                results.append(self._create_transfers(items))
            elif op == OP_CREATE_ACCOUNTS:
                results.append(self._create_accounts(items))
            elif op == OP_CLOSE_ACCOUNTS:
                results.append(self._close_accounts(items))
            elif op in (
                OP_OPEN_WALLETS, OP_UPDATE_WALLETS, OP_RECORDS, OP_ACTIVATE_LIMITS,
                OP_DISBURSE_LOANS,
            ):  # fmt: skip
                results.append(self._wallet_ops(op, items))
            elif op == OP_CANCEL_IDS:
                results.append(self._cancel_ids(items))
            else:
                raise AssertionError(f"unknown operation {op}")
        self._check_zero_sum()
        state.last_timestamp = self._clock - 1
        assert state.next_seq == first_seq + len(self._entries)
        return Outcome(
            results,
            first_seq,
            self._entries,
            self._touched,
            self._new_accounts,
            self._rejected,
            state.last_timestamp,
            list(self._touched_wallets.values()),
            [w for i, w in self._spent_wallets.items() if i not in self._touched_wallets],
            self._legs,
        )

    def _check_zero_sum(self) -> None:
        """The global invariant: sum of debits == sum of credits, posted and pending alike.

        Checked on what this batch changed (sums run in C: map + attrgetter)."""
        accounts = self._touched.values()
        before = self._before.values()
        delta = [
            sum(map(_BALANCE_FIELDS[i], accounts)) - sum(map(_BEFORE_FIELDS[i], before))
            for i in range(4)
        ]
        totals = self.state.totals
        for i in range(4):
            totals[i] += delta[i]
        assert delta[0] == delta[2] and delta[1] == delta[3], f"batch broke zero-sum: {delta}"
        assert totals[0] == totals[2] and totals[1] == totals[3], f"ledger not zero-sum: {totals}"

    def _touch(self, account: Account) -> None:
        """Note an account about to change: for persistence, zero-sum and chain rollback."""
        n = account.n
        a = account
        before = (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
        if n not in self._touched:
            self._touched[n] = account
            self._before[n] = before
        if self._undo is not None:
            self._undo.append((1, account, before))

    def _next_seq(self) -> int:
        seq = self.state.next_seq
        self.state.next_seq = seq + 1
        return seq

    # -- accounts ---------------------------------------------------------------------------------

    def _create_accounts(self, accounts: list[Account]) -> OpResult:
        out = OpResult([])
        for i, a in enumerate(accounts):
            a.timestamp = self._clock
            self._clock += 1
            code = self._create_account(a)
            if code < 0:
                out.replayed.add(i)
                code = _OK
            out.codes.append(code)
        return out

    def _create_account(self, a: Account) -> int:
        if a.id == 0:
            return Result.ID_MUST_NOT_BE_ZERO
        if a.id == ID_MAX:
            return Result.ID_MUST_NOT_BE_INT_MAX
        if a.flags & ~(_DR_LIMIT | _CR_LIMIT):
            return Result.ACCOUNT_FLAGS_INVALID
        if a.flags & _DR_LIMIT and a.flags & _CR_LIMIT:
            return Result.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if a.ledger == 0:
            return Result.LEDGER_MUST_NOT_BE_ZERO
        if a.ledger not in LEDGER_CURRENCIES:
            return Result.LEDGER_NOT_SUPPORTED
        if a.code == 0:
            return Result.CODE_MUST_NOT_BE_ZERO
        if len(a.owner.encode()) > OWNER_BYTES_MAX or len(a.operator.encode()) > OWNER_BYTES_MAX:
            return Result.OWNER_EXCEEDS_MAX
        existing = self.state.accounts.get(a.id)
        if existing is not None:
            return self._account_exists(a, existing)
        state = self.state
        a.n = state.next_account_n
        state.next_account_n += 1
        a.seq = self._next_seq()
        state.accounts[a.id] = a
        self._new_accounts.append(a)
        self._touched[a.n] = a
        self._before[a.n] = (0, 0, 0, 0)
        self._entries.append((KIND_ACCOUNT_CREATED, a, a.flags))
        return _OK

    @staticmethod
    def _account_exists(a: Account, e: Account) -> int:
        if a.flags != e.flags & ~_CLOSED:
            return Result.EXISTS_WITH_DIFFERENT_FLAGS
        if a.ledger != e.ledger:
            return Result.EXISTS_WITH_DIFFERENT_LEDGER
        if a.code != e.code:
            return Result.EXISTS_WITH_DIFFERENT_CODE
        if a.owner != e.owner:
            return Result.EXISTS_WITH_DIFFERENT_OWNER
        if a.operator != e.operator:
            return Result.EXISTS_WITH_DIFFERENT_OPERATOR
        a.seq, a.timestamp = e.seq, e.timestamp
        return -1  # identical replay

    def _close_accounts(self, closes: list[CloseAccount]) -> OpResult:
        out = OpResult([])
        for i, c in enumerate(closes):
            ts = self._clock
            self._clock += 1
            a = self.state.accounts.get(c.account_id)
            if a is None:
                out.codes.append(Result.ACCOUNT_NOT_FOUND)
            elif a.flags & _CLOSED:
                out.codes.append(_OK)
                out.replayed.add(i)
            elif a.debits_pending or a.credits_pending:
                out.codes.append(Result.ACCOUNT_HAS_PENDING_TRANSFERS)
            else:
                self._touch(a)
                a.flags |= _CLOSED
                self._next_seq()
                self._entries.append((KIND_ACCOUNT_CLOSED, a, ts))
                out.codes.append(_OK)
        return out

    # -- transfers --------------------------------------------------------------------------------

    def _create_transfers(self, transfers: list[Transfer]) -> OpResult:
        out = OpResult([_OK] * len(transfers))
        codes = out.codes
        transfer = self._transfer
        n = len(transfers)
        i = 0
        while i < n:
            t = transfers[i]
            if not t.flags & _LINKED:
                t.timestamp = self._clock
                self._clock += 1
                code = transfer(t)
                if code < 0:
                    out.replayed.add(i)
                    codes[i] = t.result
                elif code:
                    codes[i] = self._reject(t, code)
                if code and t.detail is not None:
                    out.details[i] = t.detail
                i += 1
                continue
            end = i
            while end < n and transfers[end].flags & _LINKED:
                end += 1
            self._chain(transfers, i, end, out)
            i = end + 1
        return out

    def _chain(self, transfers: list[Transfer], start: int, end: int, out: OpResult) -> None:
        """Linked transfers start..end (inclusive) succeed or fail together."""
        codes = out.codes
        if end == len(transfers):  # the batch ended inside the chain
            for k in range(start, end):
                transfers[k].timestamp = self._clock
                self._clock += 1
                codes[k] = Result.LINKED_EVENT_FAILED
            codes[end - 1] = Result.LINKED_EVENT_CHAIN_OPEN
            return
        self._undo = []
        entries_before = len(self._entries)
        seq_before = self.state.next_seq
        failed_at, failed_code = -1, 0
        for k in range(start, end + 1):
            t = transfers[k]
            t.timestamp = self._clock
            self._clock += 1
            if failed_at >= 0:  # not executed, but a replayed id still gets its original result
                existing = self.state.find_transfer(t.id)
                if existing is not None and self._transfer_exists(t, existing) < 0:
                    out.replayed.add(k)
                continue
            code = self._transfer(t)
            if code < 0:
                out.replayed.add(k)
                code = t.result
            if code:
                failed_at, failed_code = k, code
        if failed_at >= 0:
            self._rollback(entries_before, seq_before)
            for k in range(start, end + 1):
                t = transfers[k]
                if k in out.replayed:
                    codes[k] = t.result
                else:
                    code = failed_code if k == failed_at else Result.LINKED_EVENT_FAILED
                    codes[k] = self._reject(t, code)
                if t.detail is not None and codes[k] != Result.LINKED_EVENT_FAILED:
                    out.details[k] = t.detail
        self._undo = None

    def _rollback(self, entries_before: int, seq_before: int) -> None:
        assert self._undo is not None
        state = self.state
        for what, obj, old in reversed(self._undo):
            if what == 1:  # account balances
                a = obj
                assert isinstance(a, Account) and isinstance(old, tuple)
                a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted = old
            elif what == 2:  # transfer added
                assert isinstance(obj, Transfer)
                del state.transfers[obj.id]
                state.live_pending.pop(obj.id, None)
            elif what == 3:  # pending state changed
                assert isinstance(obj, Transfer) and isinstance(old, int)
                obj.state = old
                if old == PendingState.PENDING:
                    state.live_pending[obj.id] = obj
            elif what == 4:  # a wallet's spending counters
                assert isinstance(obj, Wallet) and isinstance(old, tuple)
                obj.day, obj.spent_day, obj.year, obj.spent_year = old
            elif what == 5:  # a payment code consumed
                assert isinstance(obj, Transfer)
                del state.transfers[obj.id]
                self._rejected.remove(obj)
            elif what == 6:  # a wallet's loan mandate
                assert isinstance(obj, Wallet) and isinstance(old, tuple)
                obj.loan_account, obj.loan_book, obj.loan_share_bp = old
        del self._entries[entries_before:]
        state.next_seq = seq_before

    def _reject(self, t: Transfer, code: int) -> int:
        """Record a state-dependent rejection under a fresh id, so a replay returns it."""
        t.seq = -1
        if (
            code in RECORDED_RESULTS
            and not t.flags & _ATTEMPT
            and 0 < t.id < ID_MAX
            and self.state.find_transfer(t.id) is None
        ):
            t.result = code
            self.state.transfers[t.id] = t
            self._rejected.append(t)
            if self._undo is not None:
                self._undo.append((2, t, None))
        return code

    def _transfer(self, t: Transfer) -> int:
        """Validate and apply one transfer. 0 = accepted, >0 = rejection, -1 = identical replay.

        The hot path of the whole ledger: kept flat, with locals, on purpose."""
        flags = t.flags
        tid = t.id
        if not 0 < tid < ID_MAX:
            return Result.ID_MUST_NOT_BE_ZERO if tid == 0 else Result.ID_MUST_NOT_BE_INT_MAX
        if flags and (
            flags & ~_TRANSFER_FLAGS
            or flags & (_PENDING | _POST | _VOID) not in (0, _PENDING, _POST, _VOID)
        ):
            return Result.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if t.metadata and len(t.metadata) > METADATA_BYTES_MAX:
            return Result.METADATA_EXCEEDS_MAX
        if t.authorization and len(t.authorization) > AUTHORIZATION_BYTES_MAX:
            return Result.AUTHORIZATION_EXCEEDS_MAX
        state = self.state
        existing = state.transfers.get(tid)
        if existing is None and state.live_pending:
            existing = state.live_pending.get(tid)
        if existing is not None and existing.result == TOMBSTONE_RESULT:
            return TOMBSTONE_RESULT  # a cancelled id: nothing may ever use it
        if flags & _RESOLVE:
            code = self._validate_post_or_void(t)
            if code:
                return code
            if self._operator is not None and not self._may_resolve(t.pending_id):
                return Result.DEBIT_ACCOUNT_NOT_PERMITTED
            if existing is not None:
                return self._transfer_exists(t, existing)
            return self._post_or_void(t)
        code = self._validate(t)
        if code:
            return code
        accounts = state.accounts
        dr = accounts.get(t.debit_account_id)
        operator = self._operator
        if operator is not None and dr is not None and dr.operator != operator:
            return Result.DEBIT_ACCOUNT_NOT_PERMITTED
        if existing is not None:
            return self._transfer_exists(t, existing)
        if dr is None:
            return Result.DEBIT_ACCOUNT_NOT_FOUND
        cr = accounts.get(t.credit_account_id)
        if cr is None:
            return Result.CREDIT_ACCOUNT_NOT_FOUND
        if dr.wallet is not None or cr.wallet is not None:
            return self._wallet_transfer(t, dr, cr)
        if t.code == LOAN_CHARGE and dr.debits_posted <= dr.credits_posted + dr.credits_pending:
            return Result.LOAN_NOT_ACTIVE  # a repaid loan has no mandate left to collect it
        return self._apply(t, dr, cr)

    def _apply(self, t: Transfer, dr: Account, cr: Account) -> int:
        """Checks that need both accounts, then the movement itself (posted or pending)."""
        state = self.state
        tid = t.id
        flags = t.flags
        if dr.ledger != cr.ledger:
            return Result.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
        if t.ledger != dr.ledger:
            return Result.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
        amount = t.amount
        dr_debits = dr.debits_pending + dr.debits_posted + amount  # pending funds count as spent
        if dr_debits > BALANCE_MAX:
            return Result.OVERFLOWS_DEBITS
        cr_credits = cr.credits_pending + cr.credits_posted + amount
        if cr_credits > BALANCE_MAX:
            return Result.OVERFLOWS_CREDITS
        if dr.flags or cr.flags:
            code = self._check_account_flags(dr, cr, dr_debits, cr_credits)
            if code:
                return code
        if self._undo is not None:
            self._touch(dr)
            self._touch(cr)
        else:
            touched = self._touched
            if dr.n not in touched:
                self._touch(dr)
            if cr.n not in touched:
                self._touch(cr)
        if flags & _PENDING:
            dr.debits_pending += amount
            cr.credits_pending += amount
            t.state = PendingState.PENDING
            state.live_pending[tid] = t
            if t.timeout_s:
                heapq.heappush(state.expiries, (t.expires_at(), tid))
            self._accept(t, dr, cr)
            return _OK
        dr.debits_posted += amount
        cr.credits_posted += amount
        # _accept, inlined: this is the path nearly every payment takes
        seq = state.next_seq
        state.next_seq = seq + 1
        t.seq = seq
        state.transfers[tid] = t
        if self._undo is not None:
            self._undo.append((2, t, None))
        self._entries.append(
            (
                KIND_TRANSFER,
                t,
                (
                    dr.n, cr.n,
                    dr.debits_pending, dr.debits_posted, dr.credits_pending, dr.credits_posted,
                    cr.debits_pending, cr.debits_posted, cr.credits_pending, cr.credits_posted,
                ),
            )
        )  # fmt: skip
        return _OK

    # -- wallets: signatures, limits, waterfalls -----------------------------------------------

    def _wallet_transfer(self, t: Transfer, dr: Account, cr: Account) -> int:
        """A transfer touching a wallet: the payer's authorization and limits, the payee's cap,
        and the waterfall legs, all applied atomically (undone together if any part fails)."""
        payer, payee = dr.wallet, cr.wallet
        if payer is not None:
            code = self._check_payer(t, payer, cr)
            if code:
                return code
        local = self._undo is None
        entries_before, seq_before = len(self._entries), self.state.next_seq
        if local:
            self._undo = []
        code = self._wallet_apply(t, dr, cr, payer, payee)
        if local:
            if code:
                self._rollback(entries_before, seq_before)
            self._undo = None
        return code

    def _check_payer(self, t: Transfer, payer: Wallet, cr: Account) -> int:
        """The payer's signature block (verified by the API, in parallel; here: its key version
        and expiry against the sequencer's clock), sub-wallet payees and spending limits. A loan
        repayment needs no signature: the loan's mandate, signed when it was taken, allows it."""
        if t.code == LOAN_REPAYMENT:
            return self._check_loan_repayment(t, payer, cr)
        auth = t.authorization
        if len(auth) == CODE_AUTHORIZATION_SIZE:
            code = self._check_payment_code(t)
            if code:
                return code
        elif len(auth) != AUTHORIZATION_SIZE:
            return Result.SIGNATURE_REQUIRED
        _, key_version, expires_at_ms = _AUTH.unpack_from(auth)
        if key_version != payer.key_version:
            return Result.WALLET_KEY_ROTATED
        if expires_at_ms * 1_000_000 < t.timestamp:
            return Result.SIGNATURE_EXPIRED
        if payer.bound_payee and cr.id != payer.bound_payee and cr.id != payer.parent:
            return Result.SUB_WALLET_PAYEE_NOT_ALLOWED
        if t.code != PAYMENT:
            return _OK
        limits = payer.limits or self.state.limits.get(payer.klass)
        if limits is None:
            return _OK
        amount = t.amount
        if limits.single and amount > limits.single:
            return self._over_limit(t, "single", limits.single, limits.single)
        day = (t.timestamp // 1_000_000_000 + CST_OFFSET_S) // 86_400
        spent_day = payer.spent_day if payer.day == day else 0
        if limits.daily and spent_day + amount > limits.daily:
            return self._over_limit(t, "daily", limits.daily, limits.daily - spent_day)
        spent_year = payer.spent_year if payer.day == day or payer.year == _year(day) else 0
        if limits.annual and spent_year + amount > limits.annual:
            return self._over_limit(t, "annual", limits.annual, limits.annual - spent_year)
        return _OK

    def _check_payment_code(self, t: Transfer) -> int:
        """A payment code pays once and no more than its maximum. Its id is consumed (stored as
        a tombstone) when the capture is accepted; see ``_consume_payment_code``."""
        _, _, _, hi, lo, max_amount = _CODE.unpack_from(t.authorization)
        if t.amount > max_amount:
            return Result.EXCEEDS_PAYMENT_CODE_AMOUNT
        if self.state.find_transfer((hi << 64) | lo) is not None:
            return Result.PAYMENT_CODE_USED
        return _OK

    def _consume_payment_code(self, t: Transfer) -> None:
        _, _, _, hi, lo, _ = _CODE.unpack_from(t.authorization)
        stone = Transfer((hi << 64) | lo, 0, 0, 0, 0, 0,
                         metadata=canonical_json({"reason": "payment_code_used"}))  # fmt: skip
        stone.timestamp, stone.result = t.timestamp, TOMBSTONE_RESULT
        self.state.transfers[stone.id] = stone
        self._rejected.append(stone)
        if self._undo is not None:
            self._undo.append((5, stone, None))

    def _over_limit(self, t: Transfer, name: str, limit: int, allowed: int) -> int:
        t.detail = {
            "limit": name,
            "limit_fen": limit,
            "allowed_fen": max(0, allowed),
            "limits_version": self.state.limits_version,
        }
        return {
            "single": Result.EXCEEDS_SINGLE_LIMIT,
            "daily": Result.EXCEEDS_DAILY_LIMIT,
            "annual": Result.EXCEEDS_ANNUAL_LIMIT,
            "balance_cap": Result.EXCEEDS_BALANCE_CAP,
        }[name]

    def _wallet_apply(
        self, t: Transfer, dr: Account, cr: Account, payer: Wallet | None, payee: Wallet | None
    ) -> int:
        amount = t.amount
        pending = t.flags & _PENDING
        loan_repayment = t.code == LOAN_REPAYMENT
        if (
            payer is not None
            and payer.reverse_waterfall
            and payer.linked_bank
            and not pending
            and not loan_repayment  # the mandate covers the wallet, not the bank account
        ):
            shortfall = amount - (dr.credits_posted - dr.debits_posted - dr.debits_pending)
            if shortfall > 0:  # top up from the linked bank account first, in the same breath
                code = self._leg(t, 1, payer.linked_bank, payer.settlement_account, shortfall,
                                 REVERSE_WATERFALL_BANK)  # fmt: skip
                if not code:
                    code = self._leg(t, 2, payer.float_account, dr.id, shortfall,
                                     REVERSE_WATERFALL_ECNY)  # fmt: skip
                if code:
                    return code
                t.timestamp = self._clock  # the payment follows its top-up in the log
                self._clock += 1
        excess = share = 0
        if payee is not None:
            if payee.loan_share_bp and t.code == PAYMENT and not pending:
                share = min(amount * payee.loan_share_bp // SHARE_BP_MAX, self._owed(payee))
            limits = payee.limits or self.state.limits.get(payee.klass)
            cap = limits.balance_cap if limits is not None else 0
            balance = cr.credits_posted - cr.debits_posted
            if cap and balance + amount - share > cap:
                if not payee.linked_bank or pending or t.code not in SWEEPING:
                    return self._over_limit(t, "balance_cap", cap, cap - balance)
                excess = balance + amount - share - cap
        code = self._apply(t, dr, cr)
        if code:
            return code
        if payer is not None and t.code == PAYMENT:
            self._count_spending(payer, amount, t.timestamp)
        if payer is not None and len(t.authorization) == CODE_AUTHORIZATION_SIZE:
            self._consume_payment_code(t)
        if loan_repayment and payer is not None:
            code = self._repaid(t, payer, amount, LEG_REPAYMENT_BOOK)
            if code:
                return code
        if share and payee is not None:  # a share of the payment repays the payee's loan
            code = self._leg(t, LEG_REVENUE_SHARE, cr.id, payee.float_account, share,
                             LOAN_REVENUE_SHARE)  # fmt: skip
            if not code:
                code = self._repaid(t, payee, share, LEG_REVENUE_SHARE_BOOK)
            if code:
                return code
        if excess and payee is not None:  # sweep what is over the cap to the linked bank account
            code = self._leg(t, 3, cr.id, payee.float_account, excess, WATERFALL_ECNY)
            if not code:
                code = self._leg(t, 4, payee.settlement_account, payee.linked_bank, excess,
                                 WATERFALL_BANK)  # fmt: skip
        return code

    def _leg(self, t: Transfer, role: int, dr_id: int, cr_id: int, amount: int, code: int) -> int:
        """A transfer the writer makes for ``t`` (a waterfall leg), with an id derived from it."""
        accounts = self.state.accounts
        dr, cr = accounts.get(dr_id), accounts.get(cr_id)
        if dr is None:
            return Result.DEBIT_ACCOUNT_NOT_FOUND
        if cr is None:
            return Result.CREDIT_ACCOUNT_NOT_FOUND
        metadata = canonical_json({"for": str(uuid.UUID(int=t.id))})
        leg = Transfer(leg_id(t.id, role), dr_id, cr_id, amount, t.ledger, code, 0, 0, 0, metadata)
        assert self.state.find_transfer(leg.id) is None, "a derived leg id collided"
        leg.timestamp = self._clock
        self._clock += 1
        result = self._apply(leg, dr, cr)
        if not result:
            self._legs.append(leg.id)
        return result

    # -- loans: disbursement and repayment under the borrower's mandate ------------------------

    def _owed(self, w: Wallet) -> int:
        """What the wallet still owes on its loan (0 without one)."""
        loan = self.state.accounts.get(w.loan_account) if w.loan_account else None
        if loan is None:
            return 0
        return loan.debits_posted - loan.credits_posted - loan.credits_pending

    def _check_loan_repayment(self, t: Transfer, payer: Wallet, cr: Account) -> int:
        """A repayment goes to the wallet's operator's float, while a loan is owed, and never
        for more than is owed."""
        if not payer.loan_account or cr.id != payer.float_account or t.flags & _PENDING:
            return Result.LOAN_NOT_ACTIVE
        owed = self._owed(payer)
        if not owed:
            return Result.LOAN_NOT_ACTIVE
        if t.amount > owed:
            t.detail = {"owed_fen": owed}
            return Result.EXCEEDS_LOAN_OUTSTANDING
        return _OK

    def _repaid(self, t: Transfer, w: Wallet, amount: int, role: int) -> int:
        """The bank side of a repayment (loan book -> receivable); the mandate ends, with a
        journal record, when nothing is owed any more."""
        code = self._leg(t, role, w.loan_book, w.loan_account, amount, LOAN_REPAYMENT_BOOK)
        if code or self._owed(w):
            return code
        account = self.state.accounts[w.id]
        payload: dict[str, object] = {
            "wallet": str(uuid.UUID(int=w.id)),
            "loan": str(uuid.UUID(int=w.loan_account)),
            "by": str(uuid.UUID(int=t.id)),
        }
        self._set_mandate(w, 0, 0, 0)
        self._record("loan_repaid", payload, account.n, RECORD_TYPES["loan_repaid"])
        return _OK

    def _set_mandate(self, w: Wallet, loan_account: int, book: int, share_bp: int) -> None:
        if self._undo is not None:
            self._undo.append((6, w, (w.loan_account, w.loan_book, w.loan_share_bp)))
        w.loan_account, w.loan_book, w.loan_share_bp = loan_account, book, share_bp
        self._touched_wallets[w.id] = w

    def _disburse(self, d: Disbursement) -> int:
        """Principal from the float to the wallet, the receivable debited by principal and fee,
        and the wallet's repayment mandate set: all of it, or none (a retry is a replay)."""
        accounts = self.state.accounts
        wa = accounts.get(d.wallet)
        w = wa.wallet if wa is not None else None
        if wa is None or w is None:
            self._clock += 1
            return Result.WALLET_NOT_FOUND
        if self._operator is not None and w.operator != self._operator:
            self._clock += 1
            return Result.WALLET_NOT_OPERATED
        loan, book, income = (
            accounts.get(d.loan_account),
            accounts.get(d.book),
            accounts.get(d.income),
        )
        metadata = canonical_json({"loan": str(uuid.UUID(int=d.loan_account))})
        ecny = Transfer(leg_id(d.id, LEG_DISBURSE), w.float_account, wa.id, d.principal,
                        wa.ledger, LOAN_DISBURSE, 0, 0, 0, metadata)  # fmt: skip
        ecny.timestamp = self._clock
        self._clock += 1
        existing = self.state.find_transfer(ecny.id)
        if existing is not None:
            return self._transfer_exists(ecny, existing)
        if (
            loan is None
            or book is None
            or income is None
            or (loan.code, book.code, income.code) != (LOAN_RECEIVABLE, LOAN_BOOK, LOAN_INCOME)
            or not loan.flags & _CR_LIMIT
            or loan.debits_posted
            or loan.credits_posted
            or loan.debits_pending
            or loan.credits_pending
            or not loan.operator == book.operator == income.operator == w.operator
            or not 0 <= d.share_bp <= SHARE_BP_MAX
            or d.fee < 0
        ):
            return Result.LOAN_TERMS_INVALID
        if self._owed(w):
            return Result.LOAN_ACTIVE
        self._undo = []
        entries_before, seq_before = len(self._entries), self.state.next_seq
        code = self._transfer(ecny)
        if not code:
            code = self._leg(ecny, LEG_DISBURSE_PRINCIPAL, loan.id, book.id, d.principal,
                             LOAN_PRINCIPAL)  # fmt: skip
        if not code and d.fee:
            code = self._leg(ecny, LEG_DISBURSE_FEE, loan.id, income.id, d.fee, LOAN_CHARGE)
        if code:
            self._rollback(entries_before, seq_before)
            self._undo = None
            return code
        self._set_mandate(w, loan.id, book.id, d.share_bp)
        payload: dict[str, object] = {
            **d.terms,
            "wallet": str(uuid.UUID(int=w.id)),
            "loan": str(uuid.UUID(int=loan.id)),
            "principal_fen": d.principal,
            "fee_fen": d.fee,
            "share_bp": d.share_bp,
            "loan_book": str(uuid.UUID(int=book.id)),
            "income": str(uuid.UUID(int=income.id)),
        }
        self._record("loan_disbursed", payload, wa.n, RECORD_TYPES["loan_disbursed"])
        self._undo = None
        return _OK

    def _count_spending(self, w: Wallet, amount: int, timestamp: int) -> None:
        if self._undo is not None:
            self._undo.append((4, w, (w.day, w.spent_day, w.year, w.spent_year)))
        day = (timestamp // 1_000_000_000 + CST_OFFSET_S) // 86_400
        if w.day != day:
            year = _year(day)
            if w.year != year:
                w.year, w.spent_year = year, 0
            w.day, w.spent_day = day, 0
        w.spent_day += amount
        w.spent_year += amount
        self._spent_wallets[w.id] = w

    # -- wallet operations (each a journal record; a disbursement too) -------------------------

    def _wallet_ops(self, op: int, items: list) -> OpResult:
        out = OpResult([])
        for i, item in enumerate(items):
            self._detail = None
            if op == OP_OPEN_WALLETS:
                code = self._open_wallet(item)
            elif op == OP_UPDATE_WALLETS:
                code = self._update_wallet(item)
            elif op == OP_RECORDS:
                code = self._audit(item)
            elif op == OP_DISBURSE_LOANS:
                code = self._disburse(item)
            else:
                code = self._activate_limits(item)
            if code < 0:
                out.replayed.add(i)
                code = _OK
            detail = self._take_detail()
            if detail is not None:
                out.details[i] = detail
            out.codes.append(code)
        return out

    def _take_detail(self) -> dict[str, object] | None:
        """The detail an operation left, read through a call: mypy (and so mypyc, which
        enforces it) would otherwise keep ``self._detail`` narrowed to None across the call
        that set it."""
        detail, self._detail = self._detail, None
        return detail

    def _record(self, type: str, payload: dict[str, object], account_n: int, flags: int) -> None:
        ts = self._clock
        self._clock += 1
        self._next_seq()
        self._entries.append((KIND_RECORD, (type, canonical_json(payload), ts, flags), account_n))

    def _open_wallet(self, ow: OpenWallet) -> int:
        a, w = ow.account, ow.wallet
        a.timestamp = self._clock
        self._clock += 1
        if self._operator is not None and w.operator != self._operator:
            return Result.WALLET_NOT_OPERATED
        if w.klass not in self.state.limits:
            return Result.WALLET_CLASS_INVALID
        accounts = self.state.accounts
        existing = accounts.get(a.id)
        if existing is not None:
            e = existing.wallet
            same = e is not None and _wallet_payload(e) == _wallet_payload(w)
            if same and self._account_exists(a, existing) < 0:
                return -1  # the very same wallet again: a replay
            return Result.WALLET_EXISTS
        if w.kind == "sub":
            parent = accounts.get(w.parent)
            pw = parent.wallet if parent is not None else None
            if pw is None or pw.kind == "sub" or pw.operator != w.operator:
                return Result.WALLET_NOT_FOUND
            if w.limits is None or not _within(w.limits, pw.limits or self.state.limits[pw.klass]):
                return Result.SUB_WALLET_LIMITS_INVALID
        code = self._create_account(a)
        if code:
            return code
        a.wallet = w
        self._touched_wallets[w.id] = w
        self._record("wallet_opened", _wallet_payload(w), a.n, RECORD_TYPES["wallet_opened"])
        return _OK

    def _update_wallet(self, u: UpdateWallet) -> int:
        """Class, key, reverse waterfall, linked bank account; or close a sub-wallet, returning
        its balance to the parent."""
        self._clock += 1
        account = self.state.accounts.get(u.id)
        w = account.wallet if account is not None else None
        if account is None or w is None:
            return Result.WALLET_NOT_FOUND
        if self._operator is not None and w.operator != self._operator:
            return Result.WALLET_NOT_OPERATED
        if u.close_id:
            return self._close_sub_wallet(account, w, u)
        changes: dict[str, object] = {}
        if u.klass and u.klass != w.klass:
            limits = self.state.limits.get(u.klass)
            if limits is None or w.kind == "sub":
                return Result.WALLET_CLASS_INVALID
            balance = account.credits_posted - account.debits_posted
            if limits.balance_cap and balance > limits.balance_cap:
                self._detail = {"balance_fen": balance, "balance_cap_fen": limits.balance_cap,
                                "limits_version": self.state.limits_version}  # fmt: skip
                return Result.CLASS_DOWNGRADE_EXCEEDS_BALANCE
            changes["class"] = [w.klass, u.klass]
        if u.public_key and u.public_key != w.public_key:
            changes["key_version"] = w.key_version + 1
            changes["public_key"] = base64.b64encode(u.public_key).decode()
        if u.reverse_waterfall >= 0 and bool(u.reverse_waterfall) != w.reverse_waterfall:
            changes["reverse_waterfall"] = bool(u.reverse_waterfall)
        if u.linked_bank >= 0 and u.linked_bank != w.linked_bank:
            if u.linked_bank and u.linked_bank not in self.state.accounts:
                return Result.ACCOUNT_NOT_FOUND
            changes["linked_bank"] = _uuid_or_none(u.linked_bank)
        if not changes:
            return -1  # nothing to change: an idempotent replay
        if "class" in changes:
            w.klass = u.klass
        if "key_version" in changes:
            w.public_key, w.key_version = u.public_key, w.key_version + 1
        if "reverse_waterfall" in changes:
            w.reverse_waterfall = bool(u.reverse_waterfall)
        if "linked_bank" in changes:
            w.linked_bank = u.linked_bank
        self._touched_wallets[w.id] = w
        payload: dict[str, object] = {
            "wallet": str(uuid.UUID(int=w.id)),
            "changes": changes,
            "reason": u.reason,
        }
        self._record("wallet_updated", payload, account.n, RECORD_TYPES["wallet_updated"])
        return _OK

    def _close_sub_wallet(self, account: Account, w: Wallet, u: UpdateWallet) -> int:
        """Return a sub-wallet's balance to its parent and close it (the owner signed for it)."""
        if account.flags & _CLOSED:
            return -1
        if w.kind != "sub":
            return Result.WALLET_CLASS_INVALID
        if account.debits_pending or account.credits_pending:
            return Result.ACCOUNT_HAS_PENDING_TRANSFERS
        balance = account.credits_posted - account.debits_posted
        if balance:  # the balance goes home in a transfer carrying the client's id
            home = Transfer(u.close_id, account.id, w.parent, balance, account.ledger,
                            SUB_WALLET_RETURN)  # fmt: skip
            home.timestamp = self._clock
            self._clock += 1
            parent = self.state.accounts[w.parent]
            code = self._apply(home, account, parent)
            if code:
                return code
            self._legs.append(home.id)
        self._touch(account)
        account.flags |= _CLOSED
        self._next_seq()
        self._entries.append((KIND_ACCOUNT_CLOSED, account, self._clock))
        self._clock += 1
        payload: dict[str, object] = {
            "wallet": str(uuid.UUID(int=w.id)),
            "changes": {"closed": True, "returned_fen": balance},
            "reason": u.reason,
        }
        self._record("wallet_updated", payload, account.n, RECORD_TYPES["wallet_updated"])
        return _OK

    def _audit(self, rec: AuditRecord) -> int:
        """An audit fact; if it names a wallet, it joins that wallet's history."""
        wallet = rec.payload.get("wallet")
        account = self.state.accounts.get(uuid.UUID(str(wallet)).int) if wallet else None
        if wallet and account is None:
            return Result.WALLET_NOT_FOUND
        self._record(rec.type, rec.payload, account.n if account is not None else 0, RECORD_AUDIT)
        return _OK

    def _activate_limits(self, al: ActivateLimits) -> int:
        state = self.state
        if sorted(al.classes) != [1, 2, 3, 4]:
            return Result.LIMITS_VERSION_UNKNOWN
        same = state.limits_version == al.version and all(
            state.limits[k].as_dict() == v.as_dict() for k, v in al.classes.items()
        )
        if same:
            return -1
        state.limits, state.limits_version = dict(al.classes), al.version
        payload: dict[str, object] = {
            "version": al.version,
            "classes": {str(k): v.as_dict() for k, v in sorted(al.classes.items())},
        }
        self._record("limits_activated", payload, 0, RECORD_TYPES["limits_activated"])
        return _OK

    def _may_resolve(self, pending_id: int) -> bool:
        """May the acting operator post or void this pending transfer (debits its account)?
        Unknown pending transfers are left to the engine's own result codes."""
        p = self.state.find_transfer(pending_id)
        if p is None or p.result != _OK:
            return True
        dr = self.state.accounts.get(p.debit_account_id)
        return dr is None or dr.operator == self._operator

    @staticmethod
    def _check_account_flags(dr: Account, cr: Account, dr_debits: int, cr_credits: int) -> int:
        """Closed accounts and balance limits, given each side's total after the transfer
        (pending funds count as spent)."""
        if dr.flags & _CLOSED:
            return Result.DEBIT_ACCOUNT_ALREADY_CLOSED
        if cr.flags & _CLOSED:
            return Result.CREDIT_ACCOUNT_ALREADY_CLOSED
        if dr.flags & _DR_LIMIT and dr_debits > dr.credits_posted:
            return Result.EXCEEDS_CREDITS
        if cr.flags & _CR_LIMIT and cr_credits > cr.debits_posted:
            return Result.EXCEEDS_DEBITS
        return _OK

    @staticmethod
    def _validate(t: Transfer) -> int:
        """Checks of a new (not post/void) transfer that need no state."""
        if t.debit_account_id == 0:
            return Result.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
        if t.credit_account_id == 0:
            return Result.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
        if t.debit_account_id == t.credit_account_id:
            return Result.ACCOUNTS_MUST_BE_DIFFERENT
        if t.pending_id:
            return Result.PENDING_ID_MUST_BE_ZERO
        if t.timeout_s and not t.flags & _PENDING:
            return Result.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        if t.ledger == 0:
            return Result.LEDGER_MUST_NOT_BE_ZERO
        if t.code == 0:
            return Result.CODE_MUST_NOT_BE_ZERO
        if t.amount <= 0:
            return Result.AMOUNT_MUST_NOT_BE_ZERO
        if t.amount > AMOUNT_MAX:
            return Result.AMOUNT_EXCEEDS_MAX
        return _OK

    @staticmethod
    def _validate_post_or_void(t: Transfer) -> int:
        if t.pending_id == 0:
            return Result.PENDING_ID_MUST_NOT_BE_ZERO
        if t.pending_id == t.id:
            return Result.PENDING_ID_MUST_BE_DIFFERENT
        if t.timeout_s:
            return Result.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        if t.debit_account_id and t.debit_account_id == t.credit_account_id:
            return Result.ACCOUNTS_MUST_BE_DIFFERENT
        if t.amount < 0:
            return Result.AMOUNT_MUST_NOT_BE_ZERO
        if t.amount > AMOUNT_MAX:
            return Result.AMOUNT_EXCEEDS_MAX
        return _OK

    def _post_or_void(self, t: Transfer) -> int:
        p = self.state.find_transfer(t.pending_id)
        if p is None or p.result != _OK:
            return Result.PENDING_TRANSFER_NOT_FOUND
        if not p.flags & _PENDING:
            return Result.PENDING_TRANSFER_NOT_PENDING
        if t.debit_account_id and t.debit_account_id != p.debit_account_id:
            return Result.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
        if t.credit_account_id and t.credit_account_id != p.credit_account_id:
            return Result.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
        if t.ledger and t.ledger != p.ledger:
            return Result.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER
        if t.code and t.code != p.code:
            return Result.PENDING_TRANSFER_HAS_DIFFERENT_CODE
        post = bool(t.flags & _POST)
        amount = t.amount or p.amount
        if post and amount > p.amount:
            return Result.EXCEEDS_PENDING_TRANSFER_AMOUNT
        if not post and amount != p.amount:
            return Result.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
        if p.state == PendingState.POSTED:
            return Result.PENDING_TRANSFER_ALREADY_POSTED
        if p.state == PendingState.VOIDED:
            return Result.PENDING_TRANSFER_ALREADY_VOIDED
        if p.state == PendingState.EXPIRED:
            return Result.PENDING_TRANSFER_EXPIRED
        if p.timeout_s and p.expires_at() <= t.timestamp:
            self._expire(p, t.timestamp)
            return Result.PENDING_TRANSFER_EXPIRED
        accounts = self.state.accounts
        dr, cr = accounts[p.debit_account_id], accounts[p.credit_account_id]
        if post and dr.debits_posted + amount > BALANCE_MAX:
            return Result.OVERFLOWS_DEBITS
        if post and cr.credits_posted + amount > BALANCE_MAX:
            return Result.OVERFLOWS_CREDITS
        self._touch(dr)
        self._touch(cr)
        dr.debits_pending -= p.amount
        cr.credits_pending -= p.amount
        if post:
            dr.debits_posted += amount
            cr.credits_posted += amount
        self._set_pending_state(p, PendingState.POSTED if post else PendingState.VOIDED)
        # The entry and the stored transfer hold the resolved values.
        t.debit_account_id, t.credit_account_id = p.debit_account_id, p.credit_account_id
        t.ledger, t.code, t.amount = p.ledger, p.code, amount
        self._accept(t, dr, cr)
        return _OK

    def _set_pending_state(self, p: Transfer, new: int) -> None:
        """Resolve a pending transfer. It moves to the newest end of the transfer cache: the
        database may not have committed this change yet (the pipeline), so the writer must
        never have to ask the database about it."""
        if self._undo is not None:
            self._undo.append((3, p, p.state))
        p.state = new
        state = self.state
        state.live_pending.pop(p.id, None)
        state.transfers.pop(p.id, None)
        state.transfers[p.id] = p

    def _accept(self, t: Transfer, dr: Account, cr: Account) -> None:
        t.result = _OK
        t.seq = self._next_seq()
        self.state.transfers[t.id] = t
        if self._undo is not None:
            self._undo.append((2, t, None))
        self._entries.append(
            (
                KIND_TRANSFER,
                t,
                (
                    dr.n, cr.n,
                    dr.debits_pending, dr.debits_posted, dr.credits_pending, dr.credits_posted,
                    cr.debits_pending, cr.debits_posted, cr.credits_pending, cr.credits_posted,
                ),
            )
        )  # fmt: skip

    @staticmethod
    def _transfer_exists(t: Transfer, e: Transfer) -> int:
        """Compare a replayed id with the original. -1 = identical (return the original result).

        For post/void, fields the client may leave zero (accounts, ledger, code, amount = full)
        match whatever the original resolved them to."""
        if t.flags != e.flags:
            return Result.EXISTS_WITH_DIFFERENT_FLAGS
        resolved = t.flags & (_POST | _VOID)
        if t.pending_id != e.pending_id:
            return Result.EXISTS_WITH_DIFFERENT_PENDING_ID
        if t.debit_account_id != e.debit_account_id and not (resolved and not t.debit_account_id):
            return Result.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
        if t.credit_account_id != e.credit_account_id and not (
            resolved and not t.credit_account_id
        ):
            return Result.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
        if t.amount != e.amount and not (resolved and not t.amount):
            return Result.EXISTS_WITH_DIFFERENT_AMOUNT
        if t.ledger != e.ledger and not (resolved and not t.ledger):
            return Result.EXISTS_WITH_DIFFERENT_LEDGER
        if t.code != e.code and not (resolved and not t.code):
            return Result.EXISTS_WITH_DIFFERENT_CODE
        if t.timeout_s != e.timeout_s:
            return Result.EXISTS_WITH_DIFFERENT_TIMEOUT
        if t.metadata != e.metadata:
            return Result.EXISTS_WITH_DIFFERENT_METADATA
        if t.authorization != e.authorization:
            return Result.EXISTS_WITH_DIFFERENT_AUTHORIZATION
        t.result, t.seq, t.timestamp, t.detail = e.result, e.seq, e.timestamp, e.detail
        return -1

    # -- tombstones -------------------------------------------------------------------------------

    def _cancel_ids(self, items: list[CancelTransferId]) -> OpResult:
        """Cancel unused transfer ids for good (stored as a recorded rejection, so a later
        transfer with the id is refused and a repeated cancel is a replay)."""
        out = OpResult([])
        for i, c in enumerate(items):
            self._clock += 1
            existing = self.state.find_transfer(c.id)
            if existing is not None:
                if existing.result == TOMBSTONE_RESULT:
                    out.replayed.add(i)
                    out.codes.append(_OK)
                else:
                    out.codes.append(Result.TRANSFER_ID_USED)
                continue
            if not 0 < c.id < ID_MAX:
                out.codes.append(Result.ID_MUST_NOT_BE_ZERO)
                continue
            stone = Transfer(c.id, 0, 0, 0, 0, 0, metadata=canonical_json({"reason": c.reason}))
            stone.timestamp = self._clock
            stone.result = TOMBSTONE_RESULT
            stone.attachments = c.attachments
            self.state.transfers[c.id] = stone
            self._rejected.append(stone)
            out.codes.append(_OK)
        return out

    # -- expiry -----------------------------------------------------------------------------------

    def _expire_due(self, now: int) -> None:
        expiries = self.state.expiries
        while expiries and expiries[0][0] <= now:
            _, pending_id = heapq.heappop(expiries)
            p = self.state.live_pending.get(pending_id)
            if p is not None and p.state == PendingState.PENDING:
                self._expire(p, self._clock)
                self._clock += 1

    def _expire(self, p: Transfer, timestamp: int) -> None:
        accounts = self.state.accounts
        dr, cr = accounts[p.debit_account_id], accounts[p.credit_account_id]
        self._touch(dr)
        self._touch(cr)
        dr.debits_pending -= p.amount
        cr.credits_pending -= p.amount
        self._set_pending_state(p, PendingState.EXPIRED)
        self._next_seq()
        self._entries.append(
            (
                KIND_PENDING_EXPIRED,
                (p, timestamp),
                (
                    dr.n, cr.n,
                    dr.debits_pending, dr.debits_posted, dr.credits_pending, dr.credits_posted,
                    cr.debits_pending, cr.debits_posted, cr.credits_pending, cr.credits_posted,
                ),
            )
        )  # fmt: skip

    def next_expiry(self) -> int:
        """Earliest pending timeout in ns, or 0 if none is set (the sequencer's alarm)."""
        return self.state.expiries[0][0] if self.state.expiries else 0


def leg_id(transfer_id: int, role: int) -> int:
    """The id of a leg the writer makes for a transfer: derived, so a replay finds the same."""
    digest = hashlib.blake2b(
        transfer_id.to_bytes(16, "big") + bytes((role,)), digest_size=16, person=b"ecny-leg"
    ).digest()
    return int.from_bytes(digest, "big")


def _year(day: int) -> int:
    """The calendar year (China Standard Time) of a day number since 1970-01-01."""
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).year


def _within(limits: LimitSet, outer: LimitSet) -> bool:
    """Each of a sub-wallet's limits is set (non-zero) and no larger than its parent's."""
    pairs = (
        (limits.balance_cap, outer.balance_cap),
        (limits.single, outer.single),
        (limits.daily, outer.daily),
        (limits.annual, outer.annual),
    )
    return all(mine > 0 and (theirs == 0 or mine <= theirs) for mine, theirs in pairs)


def _uuid_or_none(value: int) -> str | None:
    return str(uuid.UUID(int=value)) if value else None


def _wallet_payload(w: Wallet) -> dict[str, object]:
    return {
        "wallet": str(uuid.UUID(int=w.id)),
        "operator": w.operator,
        "kind": w.kind,
        "class": w.klass,
        "public_key": base64.b64encode(w.public_key).decode(),
        "key_version": w.key_version,
        "linked_bank": _uuid_or_none(w.linked_bank),
        "reverse_waterfall": w.reverse_waterfall,
        "parent": _uuid_or_none(w.parent),
        "bound_payee": _uuid_or_none(w.bound_payee),
        "limits": w.limits.as_dict() if w.limits is not None else None,
        "float_account": _uuid_or_none(w.float_account),
        "settlement_account": _uuid_or_none(w.settlement_account),
    }
