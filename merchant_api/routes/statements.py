"""Daily statements: every payment, refund, settlement and sweep of the merchant's wallet on one
China Standard Time day, as CSV, re-derived from the journal and signed by the ledger."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from ledger.api.deps import ReaderDep
from merchant_api import statements
from merchant_api.deps import MerchantDep, ServiceDep
from merchant_api.service import MerchantError

router = APIRouter(prefix="/v1/statements", tags=["statements"])


@router.get(
    "/{date}",
    response_class=Response,
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "The statement (see merchant_api/statements.py for the format), with "
            "its SHA-256 (hex) in `Statement-SHA256` and the ledger's Ed25519 signature "
            "(base64) in `Statement-Signature`.",
        }
    },
)
def read_statement(date: str, ctx: MerchantDep, service: ServiceDep, reader: ReaderDep) -> Response:
    """The merchant's statement for a CST day (YYYY-MM-DD). A day that has ended is complete
    (``# complete: true``) and pinned to a signed checkpoint: asking again gives the same bytes.
    Today's is partial, as of the latest checkpoint. Check one with
    ``ledger verify --statement FILE``."""
    try:
        made = statements.make(service.ledger, reader, ctx.merchant, date, service.clock_ms())
    except statements.StatementError as exc:
        raise MerchantError(422, exc.code, str(exc), "date") from None
    return Response(
        made.text.encode(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Statement-SHA256": made.sha256,
            "Statement-Signature": made.signature,
            "Content-Disposition": f'attachment; filename="statement-{ctx.merchant_id}-{date}.csv"',
        },
    )
