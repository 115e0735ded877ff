"""Consent to credit assessment and the cash-flow features it allows (``ledger.credit``).

A borrower's wallet grants and revokes consents by signing its own requests; a lender (an
operator's API key) reads the borrower's aggregated features under a live consent it holds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from ledger.api.errors import APIError, id_or_404
from ledger.api.models import AmountFen, Id128, _Strict
from ledger.api.responses import JSONResponse
from ledger.api.wallet_auth import Access, authenticate, require_operator
from ledger.credit.consent import (
    CONSENT_DAYS_MAX,
    PURPOSE_CREDIT,
    WINDOW_DAYS_MAX,
    ConsentError,
    CreditData,
)
from ledger.credit.decisions import Decisions
from ledger.credit.loans import Loans

router = APIRouter(prefix="/v1/credit", tags=["credit"])
AccessDep = Annotated[Access, Depends(authenticate)]


class ConsentCreate(_Strict):
    lender: str = Field(min_length=1, max_length=64, description="The lending operator.")
    purpose: str = Field(default=PURPOSE_CREDIT, max_length=64)
    accounts: list[Id128] = Field(
        default_factory=list, max_length=16, description="Default: the borrower's wallet."
    )
    window_days: int = Field(default=365, strict=True, ge=1, le=WINDOW_DAYS_MAX)
    expires_at_ms: int = Field(
        strict=True, description=f"At most {CONSENT_DAYS_MAX} days ahead; revocable before."
    )


class ApplicationCreate(_Strict):
    borrower: Id128
    consent_id: Id128
    amount: AmountFen


class Contest(_Strict):
    reason: str = Field(min_length=3, max_length=500)


class Review(_Strict):
    outcome: Literal["approved", "declined"]
    limit_fen: int | None = Field(default=None, strict=True, ge=1)
    reviewer: str = Field(min_length=1, max_length=100)
    note: str = Field(min_length=3, max_length=500)


class LoanAccept(_Strict):
    application_id: Id128
    amount: AmountFen = Field(description="Up to the offer's limit, in fen.")


class LoanRepay(_Strict):
    id: Id128 = Field(description="The repayment's transfer id (a retry with it is a replay).")
    amount: AmountFen | None = Field(default=None, description="Default: everything owed.")


def _loans(request: Request) -> Loans:
    loans: Loans = request.app.state.loans
    return loans


def _decisions(request: Request) -> Decisions:
    decisions: Decisions = request.app.state.credit_decisions
    return decisions


def _credit(request: Request) -> CreditData:
    credit: CreditData = request.app.state.credit
    return credit


def _refuse(exc: ConsentError) -> APIError:
    return APIError(exc.status, exc.code, exc.message, exc.param)


def _borrower_or_lender(access: Access, wallet_id: str) -> tuple[int, str | None]:
    """The borrower reading its own (signed; lender None), or a lender reading what concerns
    it (its operator name). Another wallet is told the borrower does not exist."""
    borrower = id_or_404(wallet_id, "wallet", "wallet_id")
    if access.wallet_id is not None and access.wallet_id != borrower:
        raise APIError(404, "wallet_not_found", "no such wallet", "wallet_id")
    return borrower, None if access.wallet_id == borrower else require_operator(access).operator


def _borrower(access: Access, wallet_id: str) -> int:
    """The wallet acting on its own consents: it must sign the request itself."""
    borrower = id_or_404(wallet_id, "wallet", "wallet_id")
    if access.wallet_id != borrower:
        raise APIError(
            403, "borrower_signature_required",
            "only the borrower's wallet grants, lists or revokes its consents: sign the request "
            "with its key", "wallet_id",
        )  # fmt: skip
    return borrower


@router.post("/borrowers/{wallet_id}/consents", status_code=201)
async def grant_consent(
    wallet_id: str, body: ConsentCreate, access: AccessDep, request: Request
) -> Any:
    """Grant a lender a consent to assess credit from this wallet's flows (signed by it)."""
    borrower = _borrower(access, wallet_id)
    try:
        consent = await _credit(request).grant(
            borrower, body.lender, body.purpose, body.accounts, body.window_days,
            body.expires_at_ms,
        )  # fmt: skip
    except ConsentError as exc:
        raise _refuse(exc) from None
    return JSONResponse(consent.view(_credit(request).now_ms()), status_code=201)


@router.get("/borrowers/{wallet_id}/consents")
def list_consents(wallet_id: str, access: AccessDep, request: Request) -> Any:
    """The borrower's consents (signed by the wallet); a lender sees those granted to it."""
    borrower, lender = _borrower_or_lender(access, wallet_id)
    try:
        found = _credit(request).consents(borrower)
    except ConsentError as exc:
        raise _refuse(exc) from None
    now = _credit(request).now_ms()
    data = [c.view(now) for c in found.values() if lender is None or c.lender == lender]
    return {"data": data}


@router.post("/borrowers/{wallet_id}/consents/{consent_id}/revoke")
async def revoke_consent(
    wallet_id: str, consent_id: str, access: AccessDep, request: Request
) -> Any:
    """Revoke a consent at once (signed by the borrower). Revoking twice changes nothing."""
    borrower = _borrower(access, wallet_id)
    cid = id_or_404(consent_id, "consent", "consent_id")
    try:
        consent = await _credit(request).revoke(borrower, cid)
    except ConsentError as exc:
        raise _refuse(exc) from None
    return consent.view(_credit(request).now_ms())


CONSENT_PAGE_MAX = 1000


@router.get("/consents")
def consents_granted(
    access: AccessDep,
    request: Request,
    status: Annotated[Literal["active", "revoked", "expired", "all"], Query()] = "active",
    limit: Annotated[int, Query(ge=1, le=CONSENT_PAGE_MAX)] = 100,
    starting_after: Annotated[str | None, Query(description="A consent id.")] = None,
) -> Any:
    """The consents borrowers granted you (your API key), ordered by id: what a nightly
    re-scoring reads features under."""
    lender = require_operator(access).operator
    now = _credit(request).now_ms()
    found = [c for c in _credit(request).granted_to(lender) if status in ("all", c.status(now))]
    if starting_after is not None:
        after = id_or_404(starting_after, "consent", "starting_after")
        found = [c for c in found if c.id > after]
    return {
        "object": "list",
        "data": [c.view(now) for c in found[:limit]],
        "has_more": len(found) > limit,
    }


@router.get("/borrowers/{wallet_id}/features")
async def read_features(
    wallet_id: str,
    access: AccessDep,
    request: Request,
    consent_id: Annotated[str, Query(description="The consent the borrower granted you.")],
    purpose: Annotated[str, Query(max_length=64)] = PURPOSE_CREDIT,
) -> Any:
    """The borrower's aggregated cash-flow features, for the lender holding a live consent.
    The read (who, what, under which consent) is journaled before anything is computed."""
    principal = require_operator(access)
    borrower = id_or_404(wallet_id, "wallet", "wallet_id")
    cid = id_or_404(consent_id, "consent", "consent_id")
    try:
        return await _credit(request).features(borrower, cid, principal.operator, purpose)
    except ConsentError as exc:
        raise _refuse(exc) from None


@router.post("/applications", status_code=201)
async def apply(body: ApplicationCreate, access: AccessDep, request: Request) -> Any:
    """Decide a loan in one step, for the lender holding the borrower's live consent: approved
    with a limit, rate and term, or declined with the reasons that cost the most points."""
    principal = require_operator(access)
    try:
        made = await _decisions(request).apply(
            body.borrower, body.consent_id, principal.operator, body.amount
        )
    except ConsentError as exc:
        raise _refuse(exc) from None
    return JSONResponse(made, status_code=201)


@router.get("/borrowers/{wallet_id}/applications/{application_id}")
def read_application(
    wallet_id: str, application_id: str, access: AccessDep, request: Request
) -> Any:
    """A decision with its contest and review, for the borrower (signed) or its lender."""
    borrower = id_or_404(wallet_id, "wallet", "wallet_id")
    aid = id_or_404(application_id, "application", "application_id")
    if access.wallet_id is not None and access.wallet_id != borrower:
        raise APIError(404, "application_not_found", "no such application", "application_id")
    try:
        found = _decisions(request).application(borrower, aid)
    except ConsentError as exc:
        raise _refuse(exc) from None
    if access.wallet_id is None and require_operator(access).operator != found["lender"]:
        raise APIError(404, "application_not_found", "no such application", "application_id")
    return found


@router.post("/borrowers/{wallet_id}/applications/{application_id}/contest")
async def contest(
    wallet_id: str, application_id: str, body: Contest, access: AccessDep, request: Request
) -> Any:
    """The borrower asks for a human review of a decision (signed by its wallet)."""
    borrower = _borrower(access, wallet_id)
    aid = id_or_404(application_id, "application", "application_id")
    try:
        return await _decisions(request).contest(borrower, aid, body.reason)
    except ConsentError as exc:
        raise _refuse(exc) from None


@router.post("/borrowers/{wallet_id}/applications/{application_id}/review")
async def review(
    wallet_id: str, application_id: str, body: Review, access: AccessDep, request: Request
) -> Any:
    """A reviewer of the lender upholds or overrides a decision; recorded with its note."""
    principal = require_operator(access)
    borrower = id_or_404(wallet_id, "wallet", "wallet_id")
    aid = id_or_404(application_id, "application", "application_id")
    try:
        return await _decisions(request).review(
            borrower, aid, principal.operator, body.reviewer, body.outcome, body.limit_fen,
            body.note,
        )  # fmt: skip
    except ConsentError as exc:
        raise _refuse(exc) from None


# -- loans ------------------------------------------------------------------------------------


@router.post("/borrowers/{wallet_id}/loans", status_code=201)
async def take_loan(wallet_id: str, body: LoanAccept, access: AccessDep, request: Request) -> Any:
    """Take up an approved application (signed by the borrower's wallet): the lender's float
    pays the loan into the wallet, and the signed request, kept in the journal with the loan's
    terms, is the mandate for its repayments. A retry answers the loan already made."""
    borrower = _borrower(access, wallet_id)
    headers = request.headers
    acceptance = {
        "method": request.method,
        "path": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        "timestamp_ms": int(headers["wallet-timestamp"]),
        "body": (await request.body()).decode(),
        "signature": headers["wallet-signature"],
    }
    try:
        loan = await run_in_threadpool(
            _loans(request).accept, borrower, body.application_id, body.amount, acceptance
        )
    except ConsentError as exc:
        raise _refuse(exc) from None
    return JSONResponse(loan, status_code=201)


def _loan_reader(access: Access, request: Request, wallet_id: str, loan_id: str) -> tuple[int, int]:
    """The borrower (signed) or the loan's lender may read it; to anyone else it does not exist."""
    borrower = id_or_404(wallet_id, "wallet", "wallet_id")
    lid = id_or_404(loan_id, "loan", "loan_id")
    if access.wallet_id is not None and access.wallet_id != borrower:
        raise APIError(404, "loan_not_found", "no such loan", "loan_id")
    if access.wallet_id is None:
        try:
            lender = _loans(request).terms(lid)["lender"]
        except ConsentError as exc:
            raise _refuse(exc) from None
        if require_operator(access).operator != lender:
            raise APIError(404, "loan_not_found", "no such loan", "loan_id")
    return borrower, lid


@router.get("/borrowers/{wallet_id}/loans")
def list_loans(wallet_id: str, access: AccessDep, request: Request) -> Any:
    """The borrower's loans (signed by its wallet); a lender sees those it made."""
    borrower, lender = _borrower_or_lender(access, wallet_id)
    found = _loans(request).loans_of(borrower)
    return {"data": [loan for loan in found if lender is None or loan["lender"] == lender]}


@router.get("/borrowers/{wallet_id}/loans/{loan_id}")
def read_loan(wallet_id: str, loan_id: str, access: AccessDep, request: Request) -> Any:
    """A loan's terms and where it stands: owed, past due, days past due, instalments."""
    borrower, lid = _loan_reader(access, request, wallet_id, loan_id)
    try:
        return _loans(request).loan(borrower, lid)
    except ConsentError as exc:
        raise _refuse(exc) from None


@router.get("/borrowers/{wallet_id}/loans/{loan_id}/statement")
def loan_statement(wallet_id: str, loan_id: str, access: AccessDep, request: Request) -> Any:
    """Every movement of the loan, oldest first, with what was owed after each and the transfer
    or incoming payment each repayment came from."""
    borrower, lid = _loan_reader(access, request, wallet_id, loan_id)
    try:
        return _loans(request).statement(borrower, lid)
    except ConsentError as exc:
        raise _refuse(exc) from None


@router.post("/borrowers/{wallet_id}/loans/{loan_id}/repayments", status_code=201)
async def repay_loan(
    wallet_id: str, loan_id: str, body: LoanRepay, access: AccessDep, request: Request
) -> Any:
    """Repay early, in part or in full (signed by the borrower's wallet). Repaying in full ends
    the loan and any interest not yet due."""
    borrower = _borrower(access, wallet_id)
    lid = id_or_404(loan_id, "loan", "loan_id")
    try:
        made = await run_in_threadpool(_loans(request).repay, borrower, lid, body.id, body.amount)
    except ConsentError as exc:
        raise _refuse(exc) from None
    return JSONResponse(made, status_code=200 if made["replayed"] else 201)


@router.post("/loans/collect")
async def collect_loans(access: AccessDep, request: Request) -> Any:
    """Charge the interest that fell due and collect what is past due, now (``ledger serve``
    also does this every ``LEDGER_LOAN_COLLECT_S`` seconds). The central bank's key runs it
    for every lender, an operator's for its own loans."""
    principal = require_operator(access)
    lender = None if principal.is_central_bank else principal.operator
    return await run_in_threadpool(_loans(request).collect, lender)
