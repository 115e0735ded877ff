"""API keys: the central bank issues operator keys (shown once) and revokes keys."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ledger import auth
from ledger.api.deps import CentralBank
from ledger.api.errors import APIError
from ledger.api.models import ApiKeyCreate, ApiKeyCreated

router = APIRouter(prefix="/v1/api_keys", tags=["api keys"])


@router.post("", response_model=ApiKeyCreated, status_code=201)
def create_api_key(body: ApiKeyCreate, principal: CentralBank, request: Request) -> Any:
    """Issue an operator key. The full key is in this response only."""
    try:
        new = auth.create_api_key(request.app.state.ledger.db, body.role, body.operator, body.name)
    except ValueError as exc:
        raise APIError(422, "invalid_field", str(exc), param="operator") from None
    return {
        "id": new.principal.key_id,
        "role": new.principal.role,
        "operator": new.principal.operator,
        "key": new.secret,
    }


@router.delete("/{key_id}", status_code=204)
def revoke_api_key(key_id: str, principal: CentralBank, request: Request) -> None:
    if not auth.revoke_api_key(request.app.state.ledger.db, key_id):
        raise APIError(404, "api_key_not_found", "no such active key", param="key_id")
