"""Puts the merchant API into the ledger's application (called by ``ledger.server``)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Final

from fastapi import FastAPI, Request

from ledger.api.errors import APIError, error_response
from ledger.api.responses import JSONResponse
from ledger.api.routes import payments
from merchant_api import settlements, webhooks
from merchant_api.keys import RATE_BURST, RATE_PER_S, KeyChecker
from merchant_api.ratelimit import SharedBuckets
from merchant_api.routes import merchants, payment_orders, refunds
from merchant_api.routes import settlements as settlement_routes
from merchant_api.routes import statements as statement_routes
from merchant_api.routes import webhooks as webhook_routes
from merchant_api.service import MerchantError, MerchantService

MIGRATIONS: Final = Path(__file__).parent / "migrations" / "versions"
"""The merchant API's schema branch, for ``LedgerService.open(extra_migrations=...)``."""
WORK_INTERVAL_S: Final = 1.0
log = logging.getLogger("merchant_api")


def install(app: FastAPI, service: MerchantService, *, rate_file: Path | None = None) -> None:
    """The merchant routes in ``app``; ``rate_file``: the table of rate-limit buckets this
    process shares with the server's other HTTP workers (``None``: its own)."""
    app.state.merchants = service
    buckets = SharedBuckets(rate_file, rate_per_s=RATE_PER_S, burst=RATE_BURST)
    app.state.merchant_keys = KeyChecker(service.engine, buckets)

    @app.exception_handler(MerchantError)
    async def _merchant_error(request: Request, exc: MerchantError) -> JSONResponse:
        return error_response(
            request, APIError(exc.status, exc.code, str(exc), exc.param, exc.headers)
        )

    # Orders are the merchant API's busiest routes, and FastAPI tries a request against every
    # route ahead of the one it is for, at 1-2 µs each (an order's pay request, behind every
    # ledger router, took 150-190 µs to route; now 6-13): their router goes first, after the
    # ledger's plain payment routes.
    app.include_router(payment_orders.router)
    app.router.routes.insert(len(payments.PLAIN), app.router.routes.pop())
    for module in (merchants, refunds):
        app.include_router(module.router)
    app.include_router(webhook_routes.router)
    app.include_router(statement_routes.router)
    app.include_router(settlement_routes.router)


class Workers:
    """Background work: expire orders whose time is up (and, in the same loop, anything else
    the merchant API does on a schedule). A thread, so it runs whatever serves HTTP."""

    def __init__(self, service: MerchantService) -> None:
        self.service = service
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="merchant-workers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def run_once(self) -> None:
        try:
            self.service.expire_due()
        except Exception:
            log.exception("expiring orders failed; retrying")
        try:
            webhooks.run_once(self.service)  # each step on its own: one failing spares the rest
        except Exception:
            log.exception("delivering webhooks failed; retrying")
        try:
            settlements.settle_due(self.service)  # daily merchants, once per CST day
        except Exception:
            log.exception("daily settlement failed; retrying")

    def _loop(self) -> None:
        while not self._stop.wait(WORK_INTERVAL_S):
            try:
                self.run_once()
            except Exception:
                log.exception("merchant background work failed; retrying")
