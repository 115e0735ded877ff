"""Onboarding: an operator signs up a merchant; the merchant reads itself back."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ledger.api.deps import CurrentPrincipal, ReaderDep
from ledger.api.responses import JSONResponse
from merchant_api.deps import MerchantDep, ServiceDep
from merchant_api.models import Merchant
from merchant_api.schemas import MerchantCreate
from merchant_api.service import MerchantError, MerchantService, uuid_of

router = APIRouter(prefix="/v1/merchants", tags=["merchants"])


@router.post("", status_code=201)
def create_merchant(body: MerchantCreate, principal: CurrentPrincipal, service: ServiceDep) -> Any:
    """An operator signs up a merchant: its merchant wallet (whose key this API holds, sealed,
    to sign refunds and settlements), and two API keys shown only in this answer."""
    if principal.is_central_bank:
        raise MerchantError(403, "permission_denied", "merchants are signed up by operators")
    done = service.onboard(
        principal.operator,
        name=body.name,
        city=body.city,
        mcc=body.mcc,
        kyc=body.kyc.fields(),
        linked_bank=body.linked_bank_account,
        wallet_class=body.wallet_class,
        settlement_schedule=body.settlement_schedule,
    )
    view = merchant_view(service, done.merchant)
    return JSONResponse({**view, "keys": {"test": done.test_key, "live": done.live_key}}, 201)


@router.get("/me")
def read_merchant(ctx: MerchantDep, service: ServiceDep, reader: ReaderDep) -> Any:
    view = merchant_view(service, ctx.merchant)
    account = reader.account(service.wallet_of(ctx.merchant))
    view["balance_fen"] = account.credits_posted - account.debits_posted if account else 0
    view["livemode"] = ctx.livemode
    return view


def merchant_view(service: MerchantService, merchant: Merchant) -> dict[str, Any]:
    return {
        "id": merchant.id,
        "object": "merchant",
        "name": merchant.name,
        "city": merchant.city,
        "mcc": merchant.mcc,
        "operator": merchant.operator,
        "wallet": uuid_of(merchant.wallet_id),
        "static_qr_code": service.static_qr(merchant),
        "settlement_schedule": merchant.settlement_schedule,
    }
