"""Settlement: a merchant redeems its e-CNY to its linked bank account at its operator.

A settlement is a redemption (``ledger.wallets``): the merchant wallet signs a payment to its
operator's float (code ``REDEEM_ECNY``, signed with the wallet key this API holds sealed), linked
with the operator's credit of the wallet's linked bank account (``REDEEM_BANK``); both legs
succeed or fail together. The settlement row and its ``settlement.succeeded`` /
``settlement.failed`` webhook event are attachments of the e-CNY leg, so the committer inserts
them in the same transaction as the ledger change; a settlement's id is that leg's transfer id.

By hand: ``POST /v1/settlements`` (the whole available balance, or ``amount``). On a schedule:
merchants onboarded with ``settlement_schedule: "daily"`` are settled once per China Standard
Time day, for the whole balance, by ``settle_due`` (run by the merchant API's background
workers). The day's transfer id is derived from the merchant and the day, so even a restart
between the ledger's commit and ``Merchant.settled_day`` being written cannot settle twice: the
ledger answers the second try with the first one's outcome.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Final

from sqlalchemy import text, update
from sqlmodel import Session, col, select

from ledger import signing
from ledger.domain import (
    RECORDED_RESULTS,
    RESULT_PLACEHOLDER,
    Attachment,
    Result,
)
from ledger.engine import OpResult
from ledger.ids import new_uuid
from ledger.journal import id_bytes
from ledger.wallets.service import SignedPayment, Submitted, WalletError
from merchant_api.keys import MerchantContext
from merchant_api.models import Merchant, Settlement, newest_first
from merchant_api.service import SIGNATURE_TTL_MS, MerchantError, MerchantService, uuid_of
from merchant_api.statements import cst_day, day_date

NAMESPACE: Final = uuid.UUID("04ab7e3c-b0d3-44fe-b365-e4368b47689a")
COLUMNS: Final = (
    "id",
    "merchant_id",
    "livemode",
    "amount",
    "status",
    "failure_code",
    "trigger",
    "day",
    "bank_account",
    "created_at_ms",
)
DAILY_BATCH_MAX: Final = 200
"""Merchants settled per run of the background work (the rest on the next runs)."""
log = logging.getLogger("merchant_api.settlements")


def available(service: MerchantService, merchant: Merchant) -> int:
    """What the merchant wallet can pay out now: posted balance less pending debits."""
    with service.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT credits_posted - debits_posted - debits_pending FROM accounts "
                "WHERE id = :id"
            ),
            {"id": merchant.wallet_id},
        ).first()
    return int(row[0]) if row is not None else 0


def view(s: Settlement) -> dict[str, Any]:
    failure = s.failure_code
    if failure == "linked_event_failed":
        failure = "bank_credit_failed"  # the bank leg refused, so the e-CNY leg did not move
    return {
        "id": uuid_of(s.id),
        "object": "settlement",
        "livemode": bool(s.livemode),
        "amount": s.amount,
        "currency": "CNY",
        "status": s.status,
        "failure_code": failure,
        "bank_account": uuid_of(s.bank_account),
        "trigger": s.trigger,
        "day": day_date(s.day).isoformat(),
        "created": s.created_at_ms // 1000,
        "version": 1,
    }


def _redemption(
    service: MerchantService,
    merchant: Merchant,
    settlement_id: int,
    amount: int,
    livemode: int,
    trigger: str,
) -> Submitted:
    """The merchant wallet redeems to its bank (``Wallets.redeem``), signed with the wallet key
    the API holds, carrying the settlement row and its event for either outcome."""
    wallet_id = service.wallet_of(merchant)
    wallet = service.wallets.wallet(wallet_id)
    if wallet is None or not wallet.linked_bank:
        raise MerchantError(
            409, "linked_bank_required", "the merchant wallet has no linked bank account"
        )
    now = service.clock_ms()
    expires = now + SIGNATURE_TTL_MS
    auth = signing.sign_payment(
        service.signing_key(merchant), wallet.key_version, settlement_id, wallet_id,
        wallet.float_account, amount, "CNY", expires,
    )  # fmt: skip
    attachments: list[Attachment] = []
    for status, when in (("succeeded", "ok"), ("failed", "rejected")):
        failure = None if status == "succeeded" else RESULT_PLACEHOLDER
        row = Settlement(
            id=id_bytes(settlement_id),
            merchant_id=merchant.id,
            livemode=livemode,
            amount=amount,
            status=status,
            failure_code=failure,
            trigger=trigger,
            day=cst_day(now),
            bank_account=id_bytes(wallet.linked_bank),
            created_at_ms=now,
        )
        values = tuple(getattr(row, c) for c in COLUMNS)
        event = service._event(merchant.id, livemode, f"settlement.{status}", view(row))
        attachments += [
            Attachment("settlements", COLUMNS, values, when),
            Attachment(event.table, event.columns, event.values, when),
        ]
    payment = SignedPayment(
        settlement_id, wallet_id, wallet.float_account, amount, expires, wallet.key_version,
        auth.signature, attachments=attachments,
    )  # fmt: skip
    try:
        return service.wallets.redeem(payment)
    except WalletError as exc:
        raise MerchantError(409, exc.code, str(exc), exc.param) from None


def load(service: MerchantService, settlement_id: int) -> Settlement | None:
    with Session(service.engine) as session:
        return session.get(Settlement, id_bytes(settlement_id))


def _final(code: int) -> bool:
    """An answer that settles the id for good: accepted, a recorded rejection, or the id's
    earlier outcome (``exists_with_different_*``: the same day tried again)."""
    return (
        code == 0
        or code in RECORDED_RESULTS
        or Result.EXISTS_WITH_DIFFERENT_FLAGS <= code <= Result.EXISTS_WITH_DIFFERENT_AUTHORIZATION
    )


# -- by hand ------------------------------------------------------------------------------------


def settle(ctx: MerchantContext, service: MerchantService, amount: int | None) -> Settlement:
    """Redeem ``amount`` (default: everything available) to the merchant's bank account. The
    answer is final: ``succeeded``, or ``failed`` with the ledger's code (``exceeds_credits``
    when the wallet holds less than ``amount``). It reads the database and the writer's memory
    and waits for the commit: call it from a thread, not an event loop."""
    merchant = ctx.merchant
    balance = available(service, merchant)
    if balance <= 0:
        raise MerchantError(422, "nothing_to_settle", "the merchant wallet's balance is zero")
    settlement_id = uuid.UUID(new_uuid()).int
    submitted = _redemption(service, merchant, settlement_id, amount or balance, ctx.mode, "manual")
    return _outcome(service, settlement_id, submitted.result())


def _outcome(service: MerchantService, settlement_id: int, result: OpResult) -> Settlement:
    row = load(service, settlement_id)
    if row is None:  # refused before it could be recorded (e.g. an expired signature)
        label = Result(result.codes[0]).label
        raise MerchantError(409, label, f"the ledger refused the settlement ({label}); retry")
    return row


def by_id(ctx: MerchantContext, service: MerchantService, settlement_id: int) -> Settlement:
    row = load(service, settlement_id)
    if row is None or row.merchant_id != ctx.merchant_id:
        raise MerchantError(404, "settlement_not_found", "no such settlement", "settlement")
    if row.livemode != ctx.mode:
        raise MerchantError(
            404, "livemode_mismatch", "this settlement was made in the other mode (test vs live)"
        )
    return row


def page(
    ctx: MerchantContext, service: MerchantService, limit: int, starting_after: int | None
) -> tuple[list[Settlement], bool]:
    """The caller's settlements (in its mode), newest first, after the cursor."""
    query = select(Settlement).where(
        col(Settlement.merchant_id) == ctx.merchant_id, col(Settlement.livemode) == ctx.mode
    )
    cursor = None if starting_after is None else by_id(ctx, service, starting_after)
    query = newest_first(query, Settlement, cursor)
    with Session(service.engine) as session:
        rows = list(session.exec(query.limit(limit + 1)).all())
    return rows[:limit], len(rows) > limit


# -- daily --------------------------------------------------------------------------------------


def daily_id(merchant_id: str, day: int) -> int:
    return uuid.uuid5(NAMESPACE, f"{merchant_id}/daily/{day}").int


def settle_due(service: MerchantService, limit: int = DAILY_BATCH_MAX) -> int:
    """Settle each ``daily`` merchant not yet settled today (CST, by ``service.clock_ms()``), for
    its whole balance; a zero balance just marks the day. Returns how many settled. A merchant
    whose settlement fails is logged and tried again on the next run; the others go on."""
    day = cst_day(service.clock_ms())
    with Session(service.engine) as session:
        due = session.exec(
            select(Merchant)
            .where(col(Merchant.settlement_schedule) == "daily", col(Merchant.settled_day) < day)
            .order_by(col(Merchant.id))
            .limit(limit)
        ).all()
    settled = 0
    for merchant in due:
        try:
            settled += _settle_day(service, merchant, day)
        except Exception:
            log.exception("daily settlement of %s failed; retrying on the next run", merchant.id)
    return settled


def _settle_day(service: MerchantService, merchant: Merchant, day: int) -> int:
    settlement_id = daily_id(merchant.id, day)
    amount = available(service, merchant)
    done = 0
    if amount > 0 and load(service, settlement_id) is None:
        result = _redemption(service, merchant, settlement_id, amount, 1, "daily").result()
        code = result.codes[0]
        if not _final(code):
            raise RuntimeError(f"the ledger refused the settlement: {Result(code).label}")
        done = int(code == 0 and 0 not in result.replayed)
    with Session(service.engine) as session:
        session.execute(
            update(Merchant)
            .where(col(Merchant.id) == merchant.id, col(Merchant.settled_day) < day)
            .values(settled_day=day)
        )
        session.commit()
    return done
