"""Loans on the ledger: disbursed from the lender's float, repaid from the borrower's wallet.

The borrower accepts an approved application by signing the request with its wallet's key; the
signed request (method, path, timestamp, body, signature) goes into the journal with the loan's
terms, so anyone can check that the borrower agreed to them. That acceptance is the **mandate**:
it lets the ledger take repayments from the wallet without a signature each time, and only to
its operator's float, only while something is owed, never more than is owed.

Each loan has its own receivable account at the lender (``LOAN_RECEIVABLE``, credits may not
exceed debits). Its balance is what the borrower owes:

- debited by the principal (against the lender's loan book) and by each fee or interest charge
  (against the lender's income), credited by each repayment (from the loan book);
- the e-CNY moves beside it: the float pays the principal into the wallet, repayments go from
  the wallet back to the float. Lending moves e-CNY that exists; it never creates any.

Two products, chosen by the wallet's kind:

- **revenue share** (merchant wallets): a flat fee (the annual rate over the term) is charged
  at disbursement; ``REVENUE_SHARE_BP`` of every payment the merchant receives repays the loan in
  the same journal step as the payment (an engine leg), until it is repaid. What is still owed
  at maturity falls due then.
- **instalments** (personal wallets): equal principal parts every ``INSTALMENT_DAYS``, with
  interest on the scheduled balance charged as each instalment falls due.

``Loans.collect`` (run by ``ledger serve`` every ``LEDGER_LOAN_COLLECT_S`` seconds, and by
``POST /v1/credit/loans/collect``) charges the interest that fell due and collects what is past
due from the wallet's balance. A loan with something past due is **overdue**, with its days past
due counted from the oldest instalment not fully repaid. The borrower may repay early, in part
or in full (``repay``); repaying in full ends the loan and every interest not yet due.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Final

from ledger.credit.consent import ConsentError
from ledger.credit.decisions import Decisions, Policy
from ledger.domain import (
    Account,
    AccountFlags,
    Disbursement,
    Result,
    Transfer,
    TransferFlags,
)
from ledger.engine import (
    LEG_DISBURSE,
    LEG_REVENUE_SHARE,
    OP_CREATE_ACCOUNTS,
    OP_CREATE_TRANSFERS,
    OP_DISBURSE_LOANS,
    RECORD_TYPES,
    OpResult,
    leg_id,
)
from ledger.entry import TransferEntry, canonical_json, parse_metadata
from ledger.service import Ledger
from ledger.store.queries import HISTORY_PAGE, Reader
from ledger.wallets import codes
from ledger.wallets.service import CNY, Wallets, system_id

REVENUE_SHARE: Final = "revenue_share"
INSTALMENTS: Final = "instalments"
REVENUE_SHARE_BP: Final = 1_000
"""A tenth of each payment a merchant receives repays its loan."""
INSTALMENT_DAYS: Final = 30
OFFER_DAYS: Final = 30
"""An approved application may be taken up within this many days of its decision."""
DAY_MS: Final = 86_400_000
SUBMIT_TIMEOUT_S: Final = 30.0
COLLECT_ENV: Final = "LEDGER_LOAN_COLLECT_S"
COLLECT_DEFAULT_S: Final = 300.0

log = logging.getLogger("ledger.credit.loans")


@dataclass(frozen=True, slots=True)
class LenderAccounts:
    book: int
    income: int

    @classmethod
    def of(cls, operator: str) -> LenderAccounts:
        return cls(system_id(f"{operator}/loan_book"), system_id(f"{operator}/loan_income"))


def loan_id_for(application_id: int) -> int:
    """One loan per approved application: its id (and receivable account) derive from it, so a
    retried acceptance finds the loan it made."""
    return system_id(f"loan/{uuid.UUID(int=application_id)}")


def schedule(
    product: str, principal: int, annual_rate: float, term_days: int, start_ms: int
) -> tuple[int, list[dict[str, int]]]:
    """(fee, instalments) of a loan. Each instalment: its due time, the principal and interest
    it repays, and ``amount_fen``, their sum. Pure."""
    if product == REVENUE_SHARE:
        fee = round(principal * annual_rate * term_days / 365)
        due = {
            "due_ms": start_ms + term_days * DAY_MS,
            "principal_fen": principal,
            "interest_fen": 0,
            "amount_fen": principal + fee,
        }
        return fee, [due]
    count = max(1, term_days // INSTALMENT_DAYS)
    part, left = divmod(principal, count)
    out, balance = [], principal
    for k in range(count):
        repays = part + (left if k == count - 1 else 0)
        interest = round(balance * annual_rate * INSTALMENT_DAYS / 365)
        out.append({
            "due_ms": start_ms + (k + 1) * INSTALMENT_DAYS * DAY_MS,
            "principal_fen": repays,
            "interest_fen": interest,
            "amount_fen": repays + interest,
        })  # fmt: skip
        balance -= repays
    return 0, out


def standing(terms: dict[str, Any], debits: int, credits: int, now_ms: int) -> dict[str, Any]:
    """Where a loan stands, from its terms and its receivable's posted debits (principal and
    charges) and credits (repayments). Pure."""
    owed = debits - credits
    due_by_now = 0
    instalments = []
    cumulative = 0
    oldest_unpaid_ms = None
    for inst in terms["schedule"]:
        cumulative += inst["amount_fen"]
        paid = credits >= cumulative
        if inst["due_ms"] <= now_ms:
            due_by_now += inst["amount_fen"]
            status = "paid" if paid else "overdue"
            if not paid and oldest_unpaid_ms is None:
                oldest_unpaid_ms = inst["due_ms"]
        else:
            status = "paid" if paid or not owed else "upcoming"
        instalments.append({**inst, "status": status})
    past_due = min(max(0, due_by_now - credits), owed)
    if not owed and debits:
        state = "repaid"
    elif past_due:
        state = "overdue"
    else:
        state = "active"
    upcoming = [i for i in instalments if i["status"] == "upcoming"]
    return {
        "state": state,
        "owed_fen": owed,
        "charged_fen": debits - terms["principal_fen"],
        "repaid_fen": credits,
        "past_due_fen": past_due if state == "overdue" else 0,
        "days_past_due": (
            (now_ms - oldest_unpaid_ms) // DAY_MS
            if state == "overdue" and oldest_unpaid_ms is not None
            else 0
        ),
        "next_due": upcoming[0] if upcoming else None,
        "instalments": instalments,
    }


def effective_offer(application: dict[str, Any]) -> int:
    """The limit an application allows after any review; refused if it is declined."""
    review = application.get("review")
    outcome = review["outcome"] if review else application["decision"]
    if outcome != "approved":
        raise ConsentError(409, "application_declined", "this application was declined")
    limit = review["limit_fen"] if review else application["limit_fen"]
    return int(limit)


class Loans:
    """Loans of every lender on one ledger (see the module's docstring)."""

    def __init__(
        self, ledger: Ledger, reader: Reader, wallets: Wallets, decisions: Decisions
    ) -> None:
        self.ledger, self.reader, self.wallets, self.decisions = ledger, reader, wallets, decisions
        self.policy: Policy = decisions.policy
        self._terms: dict[int, dict[str, Any]] = {}  # loan id -> its loan_disbursed record data
        self._repaid: set[int] = set()
        self._seen_seq = 0

    def now_ms(self) -> int:
        return self.ledger.clock_ns() // 1_000_000

    def _run(self, op: int, items: list, operator: str) -> OpResult:
        return self.ledger.submit(op, items, operator).result(SUBMIT_TIMEOUT_S)

    # -- taking a loan --------------------------------------------------------------------------

    def accept(
        self, borrower: int, application_id: int, amount: int, acceptance: dict[str, Any]
    ) -> dict[str, Any]:
        """Disburse an approved application's loan (``amount`` up to its limit) and set the
        wallet's mandate. ``acceptance`` is the borrower's signed request, kept in the journal.
        A retry of the same acceptance answers the loan it made."""
        application = self.decisions.application(borrower, application_id)
        limit = effective_offer(application)
        if amount > limit:
            raise ConsentError(
                422, "exceeds_limit", f"the offer allows at most {limit} fen", "amount"
            )
        now = self.now_ms()
        if now > application["decided_at_ms"] + OFFER_DAYS * DAY_MS:
            raise ConsentError(409, "offer_expired", f"offers stand for {OFFER_DAYS} days")
        wallet = self.wallets.wallet(borrower)
        if wallet is None:
            raise ConsentError(404, "wallet_not_found", "no such wallet", "wallet_id")
        lender = str(application["lender"])
        if wallet.operator != lender:
            raise ConsentError(
                409, "lender_not_wallet_operator",
                "a lender lends to wallets it operates (its float pays the loan)",
            )  # fmt: skip
        if wallet.kind == "sub":
            raise ConsentError(422, "sub_wallet", "a sub-wallet cannot borrow", "wallet_id")
        product = REVENUE_SHARE if wallet.kind == "merchant" else INSTALMENTS
        rate = float(application.get("annual_rate") or self.policy.floor_band[0])
        term = int(application.get("term_days") or self.policy.floor_band[1])
        fee, instalments = schedule(product, amount, rate, term, now)
        loan_id = loan_id_for(application_id)
        share = REVENUE_SHARE_BP if product == REVENUE_SHARE else 0
        terms: dict[str, object] = {
            "application": application["id"],
            "lender": lender,
            "product": product,
            "annual_rate": rate,
            "term_days": term,
            "start_ms": now,
            "schedule": instalments,
            "acceptance": acceptance,
        }
        lender_accounts = LenderAccounts.of(lender)
        accounts = [
            Account(lender_accounts.book, CNY, codes.LOAN_BOOK, 0, f"{lender} loan book", lender),
            Account(
                lender_accounts.income, CNY, codes.LOAN_INCOME, 0, f"{lender} loan income", lender
            ),
            Account(
                loan_id,
                CNY,
                codes.LOAN_RECEIVABLE,
                AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS,
                f"loan {uuid.UUID(int=loan_id)}",
                lender,
            ),
        ]
        made = self._run(OP_CREATE_ACCOUNTS, accounts, lender)
        if any(made.codes):
            raise ConsentError(
                409, "loan_accounts_conflict",
                f"the loan's accounts exist with other settings ({Result(max(made.codes)).label})",
            )  # fmt: skip
        d = Disbursement(
            loan_id, borrower, lender_accounts.book, lender_accounts.income, amount, fee, share,
            terms,
        )  # fmt: skip
        code = self._run(OP_DISBURSE_LOANS, [d], lender).codes[0]
        if code:
            raise _disbursement_refused(Result(code))
        return self.loan(borrower, loan_id)

    # -- reading loans ----------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Learn the loans disbursed and repaid since the last look (the records index)."""
        kinds = (RECORD_TYPES["loan_disbursed"], RECORD_TYPES["loan_repaid"])
        for seq, rec in self.reader.records_of_kind(kinds, self._seen_seq):
            data = rec.data()
            loan = uuid.UUID(str(data["loan"])).int
            if rec.type == "loan_repaid":
                self._repaid.add(loan)
            else:
                self._terms[loan] = {**data, "disbursed_at_ms": rec.timestamp // 1_000_000}
            self._seen_seq = max(self._seen_seq, seq)

    def terms(self, loan_id: int) -> dict[str, Any]:
        self._refresh()
        found = self._terms.get(loan_id)
        if found is None:
            raise ConsentError(404, "loan_not_found", "no such loan", "loan_id")
        return found

    def loan(self, borrower: int, loan_id: int) -> dict[str, Any]:
        """The loan's terms and where it stands now (balances as committed)."""
        terms = self.terms(loan_id)
        if uuid.UUID(str(terms["wallet"])).int != borrower:
            raise ConsentError(404, "loan_not_found", "no such loan", "loan_id")
        receivable = self.reader.account(loan_id)
        assert receivable is not None, "a disbursed loan has its receivable"
        now = self.now_ms()
        status = standing(terms, receivable.debits_posted, receivable.credits_posted, now)
        keep = ("application", "lender", "product", "annual_rate", "term_days", "principal_fen",
                "fee_fen", "share_bp", "disbursed_at_ms", "loan_book", "income")  # fmt: skip
        return {
            "id": str(uuid.UUID(int=loan_id)),
            "borrower": terms["wallet"],
            **{k: terms[k] for k in keep},
            "receivable_account": str(uuid.UUID(int=loan_id)),
            "disbursement_transfer": str(uuid.UUID(int=leg_id(loan_id, LEG_DISBURSE))),
            "as_of_ms": now,
            **status,
        }

    def loans_of(self, borrower: int) -> list[dict[str, Any]]:
        self._refresh()
        mine = [k for k, t in self._terms.items() if uuid.UUID(str(t["wallet"])).int == borrower]
        return [self.loan(borrower, k) for k in mine]

    def statement(self, borrower: int, loan_id: int) -> dict[str, Any]:
        """Every movement of the loan's receivable, oldest first, with what was owed after it
        and, for each repayment, the transfer (or incoming payment) it came from."""
        loan = self.loan(borrower, loan_id)
        receivable = self.reader.account(loan_id)
        assert receivable is not None
        entries: list[tuple[int, TransferEntry]] = []
        cursor = None
        while True:
            page = self.reader.history(receivable.n, HISTORY_PAGE, cursor)
            entries += [(v.seq, v.entry) for v in page if isinstance(v.entry, TransferEntry)]
            if len(page) < HISTORY_PAGE:
                break
            cursor = page[-1].seq
        entries.reverse()
        lines, owed = [], 0
        totals = {"principal_fen": 0, "charged_fen": 0, "repaid_fen": 0}
        for seq, e in entries:
            meta = parse_metadata(e.metadata)
            line: dict[str, Any] = {
                "seq": seq,
                "at_ms": e.timestamp // 1_000_000,
                "transfer": str(uuid.UUID(int=e.id)),
            }
            if e.debit_account_id == loan_id:
                owed += e.amount
                if e.code == codes.LOAN_PRINCIPAL:
                    kind, key = "disbursement", "principal_fen"
                    line["ecny_transfer"] = meta.get("for")
                else:
                    kind, key = ("interest" if "instalment" in meta else "fee"), "charged_fen"
                line |= {"kind": kind, "amount_fen": e.amount}
                totals[key] += e.amount
            else:
                owed -= e.amount
                source = uuid.UUID(str(meta["for"])).int
                found = self.reader.transfer(source)
                kind = "repayment"
                if found is not None and found.entry.code == codes.PAYMENT:
                    kind = "revenue_share"
                    line["payment"] = str(uuid.UUID(int=source))
                    line["ecny_transfer"] = str(uuid.UUID(int=leg_id(source, LEG_REVENUE_SHARE)))
                else:
                    if found is not None:
                        kind = str(parse_metadata(found.entry.metadata).get("reason", kind))
                    line["ecny_transfer"] = str(uuid.UUID(int=source))
                line |= {"kind": kind, "amount_fen": -e.amount}
                totals["repaid_fen"] += e.amount
            line["owed_fen"] = owed
            lines.append(line)
        balanced = (
            totals["principal_fen"] + totals["charged_fen"] - totals["repaid_fen"]
            == owed
            == loan["owed_fen"]
        )
        return {"loan": loan, "lines": lines, "totals": totals | {"owed_fen": owed},
                "balanced": balanced}  # fmt: skip

    # -- repaying ---------------------------------------------------------------------------------

    def repay(
        self, borrower: int, loan_id: int, transfer_id: int, amount: int | None
    ) -> dict[str, Any]:
        """An early repayment the borrower asked for (its signed request): ``amount`` fen, or
        everything owed when None. A retry with the same ``transfer_id`` is a replay."""
        loan = self.loan(borrower, loan_id)
        wallet = self.wallets.wallet(borrower)
        assert wallet is not None
        owed = int(loan["owed_fen"])
        if amount is None:
            existing = self.reader.transfer(transfer_id)
            amount = existing.entry.amount if existing is not None else owed
        if not amount:
            raise ConsentError(409, "loan_repaid", "nothing is owed on this loan")
        t = Transfer(
            transfer_id, borrower, wallet.float_account, amount, CNY, codes.LOAN_REPAYMENT,
            metadata=canonical_json({"loan": loan["id"], "reason": "early_repayment"}),
        )  # fmt: skip
        result = self._run(OP_CREATE_TRANSFERS, [t], wallet.operator)
        code = result.codes[0]
        if code:
            raise _repayment_refused(Result(code), result.details.get(0))
        return {
            "transfer": str(uuid.UUID(int=transfer_id)),
            "amount_fen": amount,
            "replayed": 0 in result.replayed,
            "loan": self.loan(borrower, loan_id),
        }

    def collect(self, lender: str | None = None) -> dict[str, int]:
        """Charge the interest that fell due and collect what is past due, from each borrower's
        available balance, for every loan being repaid (of ``lender``, or of all). Safe to run
        at any time, by any number of callers: every transfer's id derives from the loan's
        state, so a repeat is a replay."""
        self._refresh()
        now = self.now_ms()
        out = {"loans": 0, "interest_charges": 0, "collections": 0, "collected_fen": 0,
               "overdue": 0}  # fmt: skip
        for loan_id, terms in list(self._terms.items()):
            if loan_id in self._repaid or lender not in (None, terms["lender"]):
                continue
            out["loans"] += 1
            out["interest_charges"] += self._charge_interest(
                loan_id, terms, str(terms["lender"]), now
            )
            receivable = self.reader.account(loan_id)
            assert receivable is not None
            status = standing(terms, receivable.debits_posted, receivable.credits_posted, now)
            if status["state"] != "overdue":
                continue
            collected = self._collect_one(loan_id, terms, receivable.credits_posted, status)
            out["collections"] += collected > 0
            out["collected_fen"] += collected
            if status["past_due_fen"] > collected:
                out["overdue"] += 1
        return out

    def _charge_interest(self, loan_id: int, terms: dict[str, Any], lender: str, now: int) -> int:
        charges = [
            Transfer(
                system_id(f"loan/{uuid.UUID(int=loan_id)}/interest/{k}"),
                loan_id,
                LenderAccounts.of(lender).income,
                inst["interest_fen"],
                CNY,
                codes.LOAN_CHARGE,
                metadata=canonical_json({"loan": str(uuid.UUID(int=loan_id)), "instalment": k}),
            )
            for k, inst in enumerate(terms["schedule"])
            if inst["interest_fen"] and inst["due_ms"] <= now
        ]
        if not charges:
            return 0
        result = self._run(OP_CREATE_TRANSFERS, charges, lender)
        return sum(1 for i, c in enumerate(result.codes) if c == 0 and i not in result.replayed)

    def _collect_one(
        self, loan_id: int, terms: dict[str, Any], repaid: int, status: dict[str, Any]
    ) -> int:
        borrower = uuid.UUID(str(terms["wallet"])).int
        wallet = self.wallets.wallet(borrower)
        account = self.reader.account(borrower)
        if wallet is None or account is None:
            return 0
        available = account.credits_posted - account.debits_posted - account.debits_pending
        amount = min(status["past_due_fen"], available)
        if amount <= 0:
            return 0
        # the id names the loan's repaid total: one collection per state, and a failed attempt
        # (the balance moved meanwhile) leaves the id free for the next run
        t = Transfer(
            system_id(f"loan/{uuid.UUID(int=loan_id)}/collect/{repaid}"), borrower,
            wallet.float_account, amount, CNY, codes.LOAN_REPAYMENT, TransferFlags.ATTEMPT,
            metadata=canonical_json({"loan": str(uuid.UUID(int=loan_id)), "reason": "collection"}),
        )  # fmt: skip
        result = self._run(OP_CREATE_TRANSFERS, [t], wallet.operator)
        return amount if result.codes[0] == 0 and 0 not in result.replayed else 0


class Collector:
    """``Loans.collect`` every ``LEDGER_LOAN_COLLECT_S`` seconds (default 300; 0 turns it off),
    on a thread of ``ledger serve``."""

    def __init__(self, loans: Loans, interval_s: float | None = None) -> None:
        self.loans = loans
        self.interval_s = (
            float(os.environ.get(COLLECT_ENV, COLLECT_DEFAULT_S))
            if interval_s is None
            else interval_s
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="loan-collector", daemon=True)

    def start(self) -> None:
        if self.interval_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(SUBMIT_TIMEOUT_S)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                done = self.loans.collect()
                if done["collections"] or done["interest_charges"]:
                    log.info("loans collected: %s", done)
            except Exception:
                log.exception("collecting loans failed; retrying")


def _disbursement_refused(result: Result) -> ConsentError:
    known = {
        Result.LOAN_ACTIVE: (409, "loan_active", "the wallet is still repaying a loan"),
        Result.EXCEEDS_CREDITS: (
            409, "lender_float_insufficient", "the lender's float cannot fund this loan now"
        ),
        Result.EXCEEDS_BALANCE_CAP: (
            409, "exceeds_balance_cap",
            "the loan would take the wallet over its balance cap: upgrade its class or borrow less",
        ),
        Result.EXISTS_WITH_DIFFERENT_AMOUNT: (
            409, "offer_taken", "this offer was already taken up, for another amount"
        ),
        Result.LOAN_TERMS_INVALID: (409, "offer_taken", "this offer was already taken up"),
    }  # fmt: skip
    status, code, message = known.get(result, (409, result.label, result.label))
    return ConsentError(status, code, message)


def _repayment_refused(result: Result, detail: dict[str, object] | None) -> ConsentError:
    if result == Result.EXCEEDS_LOAN_OUTSTANDING:
        owed = (detail or {}).get("owed_fen")
        return ConsentError(422, "exceeds_owed", f"only {owed} fen is owed", "amount")
    if result == Result.EXCEEDS_CREDITS:
        return ConsentError(409, "insufficient_funds", "the wallet's balance is too low", "amount")
    if result == Result.LOAN_NOT_ACTIVE:
        return ConsentError(409, "loan_repaid", "nothing is owed on this loan")
    if result.name.startswith("EXISTS_WITH_DIFFERENT"):
        return ConsentError(409, "transfer_id_reused", "the id was used for another transfer", "id")
    return ConsentError(409, result.label, result.label)
