"""Composes what ``ledger serve`` runs: the ledger, its wallet layer and the ASGI application.

The one module in ``ledger`` allowed to import the packages built on top of it (the merchant
API), so the ledger core never depends on them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import FastAPI

from ledger.api.app import create_app
from ledger.config import Settings
from ledger.credit.loans import Collector
from ledger.service import LedgerService
from ledger.wallets.kyc import KycStore, load_or_create_key
from ledger.wallets.service import Wallets
from merchant_api import app as merchant_app
from merchant_api.service import MerchantService, now_ms


def open_wallets(ledger: LedgerService, kyc_key_file: Path) -> Wallets:
    """The wallet layer on a running ledger, with the operators' KYC store."""
    return Wallets(ledger, KycStore(ledger.db, load_or_create_key(kyc_key_file)))


def full_app(
    ledger: LedgerService,
    wallets: Wallets,
    merchant_key: bytes,
    *,
    clock_ms: Callable[[], int] = now_ms,
) -> tuple[FastAPI, MerchantService]:
    """The ledger's API with the merchant API in it."""
    app = create_app(ledger, wallets)
    merchants = MerchantService(ledger, wallets, merchant_key, clock_ms=clock_ms)
    merchant_app.install(app, merchants)
    return app, merchants


@contextmanager
def running(settings: Settings) -> Iterator[tuple[FastAPI, LedgerService]]:
    """Open the ledger, its wallet layer and the merchant API; yield the app; close all."""
    ledger = LedgerService.open(
        settings.database_url,
        settings.key_file,
        settings.origin,
        extra_migrations=[merchant_app.MIGRATIONS],
    )
    wallets = workers = collector = None
    try:
        wallets = open_wallets(ledger, settings.kyc_key_file)
        merchant_key = load_or_create_key(
            settings.key_file.with_name(
                settings.key_file.name.removesuffix(".key") + ".merchant-key"
            )
        )
        app, merchants = full_app(ledger, wallets, merchant_key)
        workers = merchant_app.Workers(merchants)
        workers.start()
        collector = Collector(app.state.loans)
        collector.start()
        yield app, ledger
    finally:
        if collector is not None:
            collector.stop()
        if workers is not None:
            workers.stop()
        if wallets is not None:
            wallets.close()
        ledger.close()
