"""Webhook endpoints (register, update, rotate the secret, delete) and the events sent to them
(list, read with deliveries, redeliver). Every route is the merchant's own, in its key's mode."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ledger.api.responses import JSONResponse
from merchant_api import webhooks
from merchant_api.deps import MerchantDep, ServiceDep, idempotent

router = APIRouter(tags=["webhooks"])
PAGE_LIMIT_MAX = 100


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EndpointCreate(_Strict):
    url: str = Field(
        max_length=webhooks.URL_MAX, description="http:// or https:// (live mode: https only)."
    )
    enabled_events: list[str] = Field(
        default_factory=lambda: ["*"],
        max_length=len(webhooks.EVENT_TYPES) + 1,
        description="Event types to receive, or ['*'] for all.",
    )
    description: str = Field(default="", max_length=200)


class EndpointUpdate(_Strict):
    url: str | None = Field(default=None, max_length=webhooks.URL_MAX)
    enabled_events: list[str] | None = Field(default=None, max_length=len(webhooks.EVENT_TYPES) + 1)
    description: str | None = Field(default=None, max_length=200)
    status: Literal["enabled", "disabled"] | None = Field(
        default=None, description="Re-enabling an endpoint disabled after a 410 is allowed."
    )


class SecretRotation(_Strict):
    expires_in_s: int = Field(
        default=webhooks.ROTATION_OVERLAP_DEFAULT_S,
        ge=0,
        le=webhooks.ROTATION_OVERLAP_MAX_S,
        strict=True,
        description="How long the old secret keeps signing next to the new one (0 to 7 days).",
    )


class Redelivery(_Strict):
    endpoint: str | None = Field(
        default=None,
        max_length=32,
        description="Only this endpoint (it may be newer than the event); default: every "
        "enabled endpoint the event was sent to.",
    )


# -- endpoints -------------------------------------------------------------------------------------


@router.post("/v1/webhook_endpoints", status_code=201)
async def create_webhook_endpoint(
    body: EndpointCreate, ctx: MerchantDep, service: ServiceDep, request: Request
) -> Any:
    """Register an endpoint. Its signing secret (``whsec_...``) is in this answer only."""

    def run() -> JSONResponse:
        endpoint = webhooks.create_endpoint(
            service,
            ctx,
            url=body.url,
            enabled_events=body.enabled_events,
            description=body.description,
        )
        view = webhooks.endpoint_view(endpoint, secret=endpoint.secret)
        return JSONResponse(view, status_code=201)

    return await idempotent(request, ctx, partial(run_in_threadpool, run))


@router.get("/v1/webhook_endpoints")
def list_webhook_endpoints(
    ctx: MerchantDep,
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX)] = 20,
    starting_after: Annotated[str | None, Query(description="An endpoint id.")] = None,
) -> Any:
    """Newest first."""
    rows, has_more = webhooks.list_endpoints(
        service, ctx, limit=limit, starting_after=starting_after
    )
    now = service.clock_ms()
    data = [webhooks.endpoint_view(e, now_ms=now) for e in rows]
    return {"object": "list", "data": data, "has_more": has_more}


@router.get("/v1/webhook_endpoints/{endpoint_id}")
def read_webhook_endpoint(endpoint_id: str, ctx: MerchantDep, service: ServiceDep) -> Any:
    endpoint = webhooks.endpoint(service, ctx, endpoint_id)
    return webhooks.endpoint_view(endpoint, now_ms=service.clock_ms())


@router.post("/v1/webhook_endpoints/{endpoint_id}")
async def update_webhook_endpoint(
    endpoint_id: str, body: EndpointUpdate, ctx: MerchantDep, service: ServiceDep, request: Request
) -> Any:
    """Change the url, events, description or status. Disabling cancels pending deliveries."""

    def run() -> JSONResponse:
        endpoint = webhooks.update_endpoint(
            service,
            ctx,
            endpoint_id,
            url=body.url,
            enabled_events=body.enabled_events,
            description=body.description,
            status=body.status,
        )
        return JSONResponse(webhooks.endpoint_view(endpoint, now_ms=service.clock_ms()))

    return await idempotent(request, ctx, partial(run_in_threadpool, run))


@router.delete("/v1/webhook_endpoints/{endpoint_id}")
def delete_webhook_endpoint(endpoint_id: str, ctx: MerchantDep, service: ServiceDep) -> Any:
    webhooks.delete_endpoint(service, ctx, endpoint_id)
    return {"id": endpoint_id, "object": "webhook_endpoint", "deleted": True}


@router.post("/v1/webhook_endpoints/{endpoint_id}/rotate_secret")
async def rotate_webhook_secret(
    endpoint_id: str,
    ctx: MerchantDep,
    service: ServiceDep,
    request: Request,
    body: SecretRotation | None = None,
) -> Any:
    """A new secret, shown in this answer only. The previous one keeps signing next to it
    (``webhook-signature`` carries both) for ``expires_in_s`` seconds, default one day."""
    rotation = body or SecretRotation()

    def run() -> JSONResponse:
        endpoint, secret = webhooks.rotate_secret(service, ctx, endpoint_id, rotation.expires_in_s)
        return JSONResponse(
            webhooks.endpoint_view(endpoint, secret=secret, now_ms=service.clock_ms())
        )

    return await idempotent(request, ctx, partial(run_in_threadpool, run))


# -- events ----------------------------------------------------------------------------------------


@router.get("/v1/events")
def list_events(
    ctx: MerchantDep,
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX)] = 20,
    starting_after: Annotated[str | None, Query(description="An event id.")] = None,
    type: Annotated[str | None, Query(max_length=64, description="One event type.")] = None,
    delivery_success: Annotated[
        bool | None,
        Query(description="false: events with a delivery not (yet) delivered; true: none."),
    ] = None,
) -> Any:
    """Newest first, cursor-paginated."""
    rows, has_more = webhooks.list_events(
        service,
        ctx,
        limit=limit,
        starting_after=starting_after,
        type=type,
        delivery_success=delivery_success,
    )
    by_event: dict[str, list[Any]] = {e.id: [] for e in rows}
    for d in webhooks.deliveries(service, list(by_event)):
        by_event[d.event_id].append(d)
    data = [webhooks.event_view(e, by_event[e.id]) for e in rows]
    return {"object": "list", "data": data, "has_more": has_more}


@router.get("/v1/events/{event_id}")
def read_event(event_id: str, ctx: MerchantDep, service: ServiceDep) -> Any:
    """The event, with each delivery: endpoint, state, attempts, last status, next attempt."""
    found = webhooks.event(service, ctx, event_id)
    return webhooks.event_view(found, webhooks.deliveries(service, [found.id]), detail=True)


@router.post("/v1/events/{event_id}/redeliver")
async def redeliver_event(
    event_id: str,
    ctx: MerchantDep,
    service: ServiceDep,
    request: Request,
    body: Redelivery | None = None,
) -> Any:
    """Schedule a fresh attempt now (also after the schedule ran out, or to a newer endpoint);
    the background worker sends it."""
    target = (body or Redelivery()).endpoint

    def run() -> JSONResponse:
        found = webhooks.redeliver(service, ctx, event_id, target)
        view = webhooks.event_view(found, webhooks.deliveries(service, [found.id]), detail=True)
        return JSONResponse(view)

    return await idempotent(request, ctx, partial(run_in_threadpool, run))
