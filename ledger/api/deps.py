"""FastAPI dependencies, as ``Annotated`` aliases (the full-stack template's style)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ledger.api.errors import APIError
from ledger.auth import Authenticator, AuthError, Principal
from ledger.service import Ledger
from ledger.store.queries import AccountView, Reader
from ledger.wallets.service import Wallets

_bearer = HTTPBearer(auto_error=False, description="A central-bank or operator API key.")


async def get_ledger(request: Request) -> Ledger:
    ledger: Ledger = request.app.state.ledger
    return ledger


async def get_reader(request: Request) -> Reader:
    reader: Reader = request.app.state.reader
    return reader


def wallets_of(request: Request) -> Wallets:
    """The app's wallet layer (a plain call, not a dependency: the routes that use it are
    called often, and a dependency costs FastAPI a resolution on every request)."""
    wallets: Wallets = request.app.state.wallets
    return wallets


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The API key's principal. Async, and so on the event loop: a key checked in the last
    seconds is in memory (FastAPI runs a plain ``def`` dependency on a thread: a hop there and
    back on every request). A key not in memory is read from the database on a thread."""
    if credentials is None:
        raise AuthError("missing_api_key", "send your API key as `Authorization: Bearer <key>`")
    authenticator: Authenticator = request.app.state.authenticator
    return await authenticator.authenticate_async(credentials.credentials)


async def require_central_bank(
    principal: Annotated[Principal, Depends(get_principal)],
) -> Principal:
    if not principal.is_central_bank:
        raise APIError(403, "permission_denied", "this needs a central-bank API key")
    return principal


LedgerDep = Annotated[Ledger, Depends(get_ledger)]
ReaderDep = Annotated[Reader, Depends(get_reader)]
CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
CentralBank = Annotated[Principal, Depends(require_central_bank)]


def can_see(principal: Principal, account: AccountView | None) -> bool:
    """Operators see only the accounts they operate; the central bank sees all."""
    return account is not None and (
        principal.is_central_bank or account.operator == principal.operator
    )


def visible_account(reader: Reader, principal: Principal, account_id: int) -> AccountView:
    """The account, or 404 whether it is missing or someone else's: ids reveal nothing."""
    account = reader.account(account_id)
    if account is None or not can_see(principal, account):
        raise APIError(404, "account_not_found", "no such account", param="account_id")
    return account
