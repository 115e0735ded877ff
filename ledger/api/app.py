"""The ledger's FastAPI application."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

from ledger.api.errors import API_VERSION, RequestContextMiddleware, install_error_handlers
from ledger.api.responses import JSONResponse
from ledger.api.routes import (
    accounts,
    api_keys,
    bank_accounts,
    credit,
    issuance,
    journal,
    payments,
    transfers,
    wallets,
)
from ledger.api.wallet_auth import Admission, WriterAdmission
from ledger.auth import Authenticator
from ledger.credit.consent import CreditData
from ledger.credit.decisions import Decisions
from ledger.credit.loans import Loans
from ledger.service import Ledger
from ledger.store.queries import Reader
from ledger.wallets.service import Wallets


def create_app(
    ledger: Ledger, wallet_service: Wallets, *, admission: Admission | None = None
) -> FastAPI:
    """The ledger's routes around a running ``Ledger`` and its wallet layer (which the
    caller started and closes). ``admission``: who admits signed wallet requests (default: the
    ledger's writer in this process; in an HTTP worker, the writer over the link)."""
    app = FastAPI(
        title="e-CNY reference ledger",
        version=API_VERSION,
        description=(
            "A signed, append-only, double-entry ledger. Money is integer fen. Every accepted "
            "transfer is a journal entry in an RFC 9162 Merkle log whose checkpoints the ledger "
            "signs with Ed25519."
        ),
        default_response_class=JSONResponse,
    )
    app.state.ledger = ledger
    app.state.reader = Reader(ledger.db, ledger.origin)
    app.state.authenticator = Authenticator(ledger.db)
    app.state.wallets = wallet_service
    app.state.admission = admission or WriterAdmission(ledger)
    app.state.credit = CreditData(ledger, app.state.reader)
    app.state.credit_decisions = Decisions(app.state.credit)
    app.state.loans = Loans(ledger, app.state.reader, wallet_service, app.state.credit_decisions)
    install_error_handlers(app)
    # The busiest first: Starlette tries routes in order, and the busiest routes should not pay
    # for matching every other one first. The two plain ones go first in the app's own router,
    # ahead of FastAPI's documentation routes and of the included routers, which FastAPI matches
    # through a layer of its own (in-process, a POST /v1/payments refused with 422 took 44.2 µs
    # with them first in the payments router, 35.7 after the documentation routes, 32.4 first).
    # Wallets (balances, history, top-ups) next: behind the other routers, routing a
    # GET /v1/wallets/{id} took 52-69 µs; next after payments, 24. (The merchant API puts its
    # orders' routes right after the plain ones.)
    routers = (
        payments, wallets, accounts, transfers, journal, api_keys, issuance, bank_accounts, credit,
    )  # fmt: skip
    app.router.routes[:0] = [p.route() for p in payments.PLAIN]
    for module in routers:
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            for route in payments.PLAIN:
                route.document(document)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["health"])
    app.add_middleware(RequestContextMiddleware)
    return app


def healthz(request: Request) -> dict[str, Any]:
    """A module-level function, not a closure over the ledger: FastAPI keeps every endpoint
    it has analysed in a module-level cache (4,096 entries), so a closure would keep each app's
    ledger alive after it closed (16 MiB each; the test suite makes a thousand apps)."""
    ledger: Ledger = request.app.state.ledger
    return {"status": "ok", "tree_size": ledger.committed_size(), "origin": ledger.origin}
