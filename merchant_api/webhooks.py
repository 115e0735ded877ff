"""Webhooks: the endpoints merchants register, and the worker that delivers the event outbox.

Events are rows of ``webhook_events``, written by the ledger's committer in the same transaction
as the change they report (see ``service``); their ``payload`` is the exact JSON sent. The worker
(:func:`run_once`, called by ``app.Workers`` every second, or directly by tests):

1. **fans out** new events: one ``webhook_deliveries`` row per enabled endpoint of the event's
   merchant and mode whose ``enabled_events`` match (``"*"`` or the type). The claim is
   ``UPDATE webhook_events SET fanned_out = 1 ... WHERE fanned_out = 0 RETURNING``, in the same
   transaction as the delivery rows, so two workers never fan one event out twice and a crash
   leaves it to be done again;
2. **delivers** due deliveries: a POST of the stored payload bytes, signed per Standard Webhooks
   (``webhook-id`` = event id, ``webhook-timestamp`` = this attempt's time, ``webhook-signature``
   with one ``v1,`` entry per live secret: two during a rotation's overlap). A 2xx answer is
   delivery (marked only after it: at least once); 410 Gone disables the endpoint and cancels its
   pending deliveries; anything else (other status, connection error, timeout) is retried on
   :data:`RETRY_SCHEDULE_S`, after whose last attempt the delivery is ``failed``. Each attempt
   resolves the URL's host and connects only to an address :mod:`merchant_api.egress` allows
   (public ones; loopback too in test mode): an address it refuses is a failed attempt, and no
   connection is made.

Bounds: at most :data:`RUN_DELIVERIES_MAX` deliveries per run, :data:`PER_ENDPOINT_MAX` of them
per endpoint; endpoints are served in parallel (:data:`CONCURRENCY` threads), each endpoint's
deliveries in order, and an endpoint that fails once is left alone for the rest of the run, so a
dead or slow endpoint costs one timeout per run and cannot hold up the others. Each attempt first
*claims* its delivery (moves ``next_attempt_ms`` to a lease in the future with a conditional
UPDATE): a worker that dies mid-attempt leaves it to be retried when the lease ends.

Times come from the service's clock (``service.clock_ms()``) so tests move time, not sleep.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from merchant_api.egress import EgressRefused
from merchant_api.keys import MerchantContext
from merchant_api.models import (
    Merchant,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    newest_first,
)
from merchant_api.service import MerchantError, MerchantService
from wallet_sdk.webhooks import generate_secret, signature_header

log = logging.getLogger("merchant_api.webhooks")

EVENT_TYPES: Final = (
    "payment_order.succeeded",
    "payment_order.canceled",
    "payment_order.expired",
    "refund.succeeded",
    "refund.failed",
    "settlement.succeeded",
    "settlement.failed",
)
RETRY_SCHEDULE_S: Final = (0, 5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
"""Standard Webhooks' schedule: attempt n+1 comes RETRY_SCHEDULE_S[n] seconds after attempt n
failed (the first at once); after the 8th failure the delivery is ``failed``."""
ATTEMPT_TIMEOUT_S: Final = 10.0
"""Per phase of an attempt (connect, send, wait for the answer's headers)."""
LEASE_MS: Final = 5 * 60 * 1000
"""How long a claimed attempt may take before another run may try the delivery again."""
RUN_DELIVERIES_MAX: Final = 100
PER_ENDPOINT_MAX: Final = 20
CONCURRENCY: Final = 8
RUN_BUDGET_S: Final = 5.0
"""After this long (real time), a run starts no new attempts; the rest wait for the next run."""
FAN_OUT_MAX: Final = 500
ENDPOINTS_MAX: Final = 16
"""Endpoints per merchant and mode."""
ROTATION_OVERLAP_MAX_S: Final = 7 * 24 * 3600
ROTATION_OVERLAP_DEFAULT_S: Final = 24 * 3600
URL_MAX: Final = 2048
ERROR_MAX: Final = 500
USER_AGENT: Final = "ecny-ledger-webhooks/1"
_PORTS: Final = {"http": 80, "https": 443}


# -- endpoints -------------------------------------------------------------------------------------


def _check_url(service: MerchantService, url: str, livemode: bool) -> str:
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError:
        parts, port = None, None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or len(url) > URL_MAX
        or any(c.isspace() for c in url)
        or port == 0
    ):
        raise MerchantError(
            422, "invalid_url", "url must be an absolute http:// or https:// URL with a host", "url"
        )
    if livemode and parts.scheme != "https":
        raise MerchantError(422, "url_not_https", "live mode endpoints must use https://", "url")
    try:
        service.egress.check_host(parts.hostname, livemode)
    except EgressRefused as exc:
        raise MerchantError(422, "url_not_allowed", str(exc), "url") from None
    return url


def _check_events(events: Sequence[str]) -> list[str]:
    if not events:
        raise MerchantError(
            422, "invalid_enabled_events", "list at least one event type, or '*'", "enabled_events"
        )
    for name in events:
        if name != "*" and name not in EVENT_TYPES:
            raise MerchantError(
                422,
                "unknown_event_type",
                f"unknown event type {name!r:.80}; known: '*', {', '.join(EVENT_TYPES)}",
                "enabled_events",
            )
    return ["*"] if "*" in events else list(dict.fromkeys(events))


def _matches(endpoint: WebhookEndpoint, event_type: str) -> bool:
    enabled = json.loads(endpoint.enabled_events)
    return "*" in enabled or event_type in enabled


def endpoint_view(
    endpoint: WebhookEndpoint, *, secret: str | None = None, now_ms: int = 0
) -> dict[str, Any]:
    """The endpoint as the API shows it; ``secret`` only in the answer that made it."""
    overlap = endpoint.previous_secret is not None and (endpoint.previous_until_ms or 0) > now_ms
    view: dict[str, Any] = {
        "id": endpoint.id,
        "object": "webhook_endpoint",
        "livemode": bool(endpoint.livemode),
        "url": endpoint.url,
        "description": endpoint.description,
        "enabled_events": json.loads(endpoint.enabled_events),
        "status": endpoint.status,
        "disabled_reason": endpoint.disabled_reason,
        "created": endpoint.created_at_ms // 1000,
        "previous_secret_expires_at": (endpoint.previous_until_ms or 0) // 1000
        if overlap
        else None,
    }
    if secret is not None:
        view["secret"] = secret
    return view


def create_endpoint(
    service: MerchantService,
    ctx: MerchantContext,
    *,
    url: str,
    enabled_events: Sequence[str] = ("*",),
    description: str = "",
) -> WebhookEndpoint:
    """A new enabled endpoint with a fresh ``whsec_`` secret (the caller shows it once)."""
    url = _check_url(service, url, ctx.livemode)
    events = _check_events(enabled_events)
    # Counted and added in one write transaction, with the merchant's row locked on PostgreSQL
    # (SQLite's BEGIN IMMEDIATE already lets one writer in): two requests at once cannot both
    # take the last place.
    with Session(service.writes) as session:
        session.execute(
            select(col(Merchant.id)).where(col(Merchant.id) == ctx.merchant_id).with_for_update()
        )
        count = session.execute(
            select(func.count())
            .select_from(WebhookEndpoint)
            .where(
                col(WebhookEndpoint.merchant_id) == ctx.merchant_id,
                col(WebhookEndpoint.livemode) == ctx.mode,
            )
        ).one()[0]
        if count >= ENDPOINTS_MAX:
            raise MerchantError(
                409,
                "endpoint_limit_reached",
                f"at most {ENDPOINTS_MAX} webhook endpoints per mode; delete one first",
            )
        endpoint = WebhookEndpoint(
            id="we_" + secrets.token_hex(12),
            merchant_id=ctx.merchant_id,
            livemode=ctx.mode,
            url=url,
            secret=generate_secret(),
            enabled_events=json.dumps(events),
            description=description,
            status="enabled",
            created_at_ms=service.clock_ms(),
        )
        session.add(endpoint)
        session.commit()
        session.refresh(endpoint)
    return endpoint


def endpoint(service: MerchantService, ctx: MerchantContext, endpoint_id: str) -> WebhookEndpoint:
    """The caller's endpoint: 404 for anyone else's, ``livemode_mismatch`` for the other mode."""
    with Session(service.engine) as session:
        found = session.get(WebhookEndpoint, endpoint_id)
    if found is None or found.merchant_id != ctx.merchant_id:
        raise MerchantError(
            404, "webhook_endpoint_not_found", "no such webhook endpoint", "webhook_endpoint"
        )
    if found.livemode != ctx.mode:
        raise MerchantError(
            404, "livemode_mismatch", "this endpoint was made in the other mode (test vs live)"
        )
    return found


def list_endpoints(
    service: MerchantService, ctx: MerchantContext, *, limit: int, starting_after: str | None
) -> tuple[list[WebhookEndpoint], bool]:
    """Newest first."""
    query = select(WebhookEndpoint).where(
        col(WebhookEndpoint.merchant_id) == ctx.merchant_id,
        col(WebhookEndpoint.livemode) == ctx.mode,
    )
    cursor = None if starting_after is None else endpoint(service, ctx, starting_after)
    query = newest_first(query, WebhookEndpoint, cursor).limit(limit + 1)
    with Session(service.engine) as session:
        rows = [r[0] for r in session.execute(query).all()]
    return rows[:limit], len(rows) > limit


def update_endpoint(
    service: MerchantService,
    ctx: MerchantContext,
    endpoint_id: str,
    *,
    url: str | None = None,
    enabled_events: Sequence[str] | None = None,
    description: str | None = None,
    status: str | None = None,
) -> WebhookEndpoint:
    """Change url, events, description or status. Disabling cancels the endpoint's pending
    deliveries; enabling (also after a 410) clears the reason and takes new events from now on
    (earlier ones can be sent again with redeliver)."""
    current = endpoint(service, ctx, endpoint_id)
    values: dict[str, Any] = {}
    if url is not None:
        values["url"] = _check_url(service, url, ctx.livemode)
    if enabled_events is not None:
        values["enabled_events"] = json.dumps(_check_events(enabled_events))
    if description is not None:
        values["description"] = description
    if status is not None and status != current.status:
        if status not in ("enabled", "disabled"):
            raise MerchantError(
                422, "invalid_status", "status is 'enabled' or 'disabled'", "status"
            )
        values["status"] = status
        values["disabled_reason"] = "disabled by the merchant" if status == "disabled" else None
    if values:
        with Session(service.engine) as session:
            session.execute(
                update(WebhookEndpoint)
                .where(col(WebhookEndpoint.id) == current.id)
                .values(**values)
            )
            if values.get("status") == "disabled":
                _cancel_pending(session, current.id)
            session.commit()
    return endpoint(service, ctx, endpoint_id)


def delete_endpoint(service: MerchantService, ctx: MerchantContext, endpoint_id: str) -> None:
    """Delete it; its deliveries that never arrived go too (the delivered ones stay as history)."""
    found = endpoint(service, ctx, endpoint_id)
    with Session(service.engine) as session:
        session.execute(
            delete(WebhookDelivery).where(
                col(WebhookDelivery.endpoint_id) == found.id,
                col(WebhookDelivery.state) != "delivered",
            )
        )
        session.execute(delete(WebhookEndpoint).where(col(WebhookEndpoint.id) == found.id))
        session.commit()


def rotate_secret(
    service: MerchantService,
    ctx: MerchantContext,
    endpoint_id: str,
    expires_in_s: int = ROTATION_OVERLAP_DEFAULT_S,
) -> tuple[WebhookEndpoint, str]:
    """A new secret (returned, to show once). The one it replaces keeps signing next to it for
    ``expires_in_s`` seconds (0: not at all); a secret older than that is dropped."""
    if not 0 <= expires_in_s <= ROTATION_OVERLAP_MAX_S:
        raise MerchantError(
            422,
            "invalid_expires_in_s",
            f"expires_in_s is between 0 and {ROTATION_OVERLAP_MAX_S} (7 days)",
            "expires_in_s",
        )
    current = endpoint(service, ctx, endpoint_id)
    secret = generate_secret()
    now = service.clock_ms()
    with Session(service.engine) as session:
        session.execute(
            update(WebhookEndpoint)
            .where(col(WebhookEndpoint.id) == current.id)
            .values(
                secret=secret,
                previous_secret=current.secret if expires_in_s else None,
                previous_until_ms=now + expires_in_s * 1000 if expires_in_s else None,
            )
        )
        session.commit()
    return endpoint(service, ctx, endpoint_id), secret


def signing_secrets(endpoint: WebhookEndpoint, now_ms: int) -> list[str]:
    """The secrets that sign now: the current one, and the previous one during its overlap."""
    out = [endpoint.secret]
    if endpoint.previous_secret and (endpoint.previous_until_ms or 0) > now_ms:
        out.append(endpoint.previous_secret)
    return out


def _cancel_pending(session: Session, endpoint_id: str) -> None:
    session.execute(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.endpoint_id) == endpoint_id,
            col(WebhookDelivery.state) == "pending",
        )
        .values(state="canceled")
    )


# -- events ----------------------------------------------------------------------------------------


def event(service: MerchantService, ctx: MerchantContext, event_id: str) -> WebhookEvent:
    with Session(service.engine) as session:
        found = session.get(WebhookEvent, event_id)
    if found is None or found.merchant_id != ctx.merchant_id:
        raise MerchantError(404, "event_not_found", "no such event", "event")
    if found.livemode != ctx.mode:
        raise MerchantError(
            404, "livemode_mismatch", "this event happened in the other mode (test vs live)"
        )
    return found


def _undelivered() -> Any:
    """SQL: the event has a delivery that has not (yet) arrived."""
    return exists().where(
        col(WebhookDelivery.event_id) == col(WebhookEvent.id),
        col(WebhookDelivery.state) != "delivered",
    )


def list_events(
    service: MerchantService,
    ctx: MerchantContext,
    *,
    limit: int,
    starting_after: str | None = None,
    type: str | None = None,
    delivery_success: bool | None = None,
) -> tuple[list[WebhookEvent], bool]:
    """Newest first. ``delivery_success=False``: events with a delivery not (yet) delivered
    (pending, failed or canceled); ``True``: events with none such."""
    query = select(WebhookEvent).where(
        col(WebhookEvent.merchant_id) == ctx.merchant_id, col(WebhookEvent.livemode) == ctx.mode
    )
    cursor = None if starting_after is None else event(service, ctx, starting_after)
    query = newest_first(query, WebhookEvent, cursor)
    if type is not None:
        query = query.where(col(WebhookEvent.type) == type)
    if delivery_success is False:
        query = query.where(_undelivered())
    elif delivery_success is True:
        query = query.where(~_undelivered())
    with Session(service.engine) as session:
        rows = [r[0] for r in session.execute(query.limit(limit + 1)).all()]
    return rows[:limit], len(rows) > limit


def deliveries(service: MerchantService, event_ids: Sequence[str]) -> list[WebhookDelivery]:
    if not event_ids:
        return []
    with Session(service.engine) as session:
        return [
            r[0]
            for r in session.execute(
                select(WebhookDelivery)
                .where(col(WebhookDelivery.event_id).in_(list(event_ids)))
                .order_by(col(WebhookDelivery.endpoint_id))
            ).all()
        ]


def delivery_view(delivery: WebhookDelivery) -> dict[str, Any]:
    pending = delivery.state == "pending"
    return {
        "endpoint": delivery.endpoint_id,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "last_attempt_at": _s(delivery.last_attempt_ms),
        "next_attempt_at": _s(delivery.next_attempt_ms) if pending else None,
        "delivered_at": _s(delivery.delivered_at_ms),
    }


def _s(ms: int | None) -> int | None:
    return None if ms is None else ms // 1000


def event_view(
    event: WebhookEvent, its_deliveries: Sequence[WebhookDelivery], *, detail: bool = False
) -> dict[str, Any]:
    """The event as delivered (id, type, timestamp in ms, livemode, object_version, data), with
    ``created`` (seconds), ``pending_webhooks`` and, in detail, its deliveries."""
    view: dict[str, Any] = {"object": "event", **json.loads(event.payload)}
    view["created"] = event.created_at_ms // 1000
    view["pending_webhooks"] = sum(1 for d in its_deliveries if d.state == "pending")
    view["delivery_success"] = all(d.state == "delivered" for d in its_deliveries)
    if detail:
        view["deliveries"] = [delivery_view(d) for d in its_deliveries]
    return view


def redeliver(
    service: MerchantService, ctx: MerchantContext, event_id: str, endpoint_id: str | None = None
) -> WebhookEvent:
    """Schedule a fresh attempt now: to ``endpoint_id`` (which may be newer than the event), or
    to every enabled endpoint the event has a delivery for. A ``failed`` delivery gets one more
    attempt (if it fails, it is ``failed`` again); a pending one is simply brought forward."""
    found = event(service, ctx, event_id)
    _fan_out(service, [found.id])  # its deliveries exist before we touch them
    now = service.clock_ms()
    if endpoint_id is not None:
        target = endpoint(service, ctx, endpoint_id)
        if target.status != "enabled":
            raise MerchantError(409, "endpoint_disabled", "enable the endpoint first", "endpoint")
        with Session(service.engine) as session:
            moved = session.execute(
                update(WebhookDelivery)
                .where(
                    col(WebhookDelivery.event_id) == found.id,
                    col(WebhookDelivery.endpoint_id) == target.id,
                )
                .values(state="pending", next_attempt_ms=now)
            ).rowcount  # type: ignore[attr-defined]
            if not moved:
                session.add(
                    WebhookDelivery(
                        event_id=found.id,
                        endpoint_id=target.id,
                        state="pending",
                        attempts=0,
                        next_attempt_ms=now,
                    )
                )
            try:
                session.commit()
            except IntegrityError:  # made meanwhile by a concurrent redeliver: it is due now
                session.rollback()
        return found
    enabled = select(col(WebhookEndpoint.id)).where(col(WebhookEndpoint.status) == "enabled")
    with Session(service.engine) as session:
        moved = session.execute(
            update(WebhookDelivery)
            .where(
                col(WebhookDelivery.event_id) == found.id,
                col(WebhookDelivery.endpoint_id).in_(enabled),
            )
            .values(state="pending", next_attempt_ms=now)
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
    if not moved:
        raise MerchantError(
            409,
            "no_endpoint_to_redeliver",
            "the event has no delivery to an enabled endpoint; pass `endpoint`",
            "endpoint",
        )
    return found


# -- the worker ------------------------------------------------------------------------------------


@dataclass
class RunResult:
    fanned_out: int = 0
    attempted: int = 0
    delivered: int = 0


def run_once(service: MerchantService, *, limit: int = RUN_DELIVERIES_MAX) -> RunResult:
    """One round: fan out new events, then attempt up to ``limit`` due deliveries."""
    result = RunResult(fanned_out=_fan_out(service, None))
    attempted, delivered = deliver_due(service, limit=limit)
    result.attempted, result.delivered = attempted, delivered
    return result


def _fan_out(service: MerchantService, event_ids: Sequence[str] | None) -> int:
    """Claim events not yet fanned out (all of ``event_ids``, or the oldest FAN_OUT_MAX) and
    insert their deliveries, in one transaction; the number of events claimed."""
    pending = select(col(WebhookEvent.id)).where(col(WebhookEvent.fanned_out) == 0)
    if event_ids is not None:
        pending = pending.where(col(WebhookEvent.id).in_(list(event_ids)))
    pending = pending.order_by(col(WebhookEvent.created_at_ms)).limit(FAN_OUT_MAX)
    with Session(service.engine) as session:  # read-only first: no write lock when idle
        if session.execute(pending.limit(1)).first() is None:
            return 0
    now = service.clock_ms()
    with Session(service.engine) as session:
        claimed = session.execute(
            update(WebhookEvent)
            .where(col(WebhookEvent.id).in_(pending), col(WebhookEvent.fanned_out) == 0)
            .values(fanned_out=1)
            .returning(
                col(WebhookEvent.id),
                col(WebhookEvent.merchant_id),
                col(WebhookEvent.livemode),
                col(WebhookEvent.type),
            )
        ).all()
        if not claimed:
            session.rollback()
            return 0
        merchants = {row[1] for row in claimed}
        endpoints = [
            r[0]
            for r in session.execute(
                select(WebhookEndpoint).where(
                    col(WebhookEndpoint.merchant_id).in_(merchants),
                    col(WebhookEndpoint.status) == "enabled",
                )
            ).all()
        ]
        existing = {
            (r[0], r[1])
            for r in session.execute(
                select(col(WebhookDelivery.event_id), col(WebhookDelivery.endpoint_id)).where(
                    col(WebhookDelivery.event_id).in_([row[0] for row in claimed])
                )
            ).all()
        }
        for event_id, merchant_id, livemode, event_type in claimed:
            for e in endpoints:
                if (
                    e.merchant_id == merchant_id
                    and e.livemode == livemode
                    and _matches(e, event_type)
                    and (event_id, e.id) not in existing
                ):
                    session.add(
                        WebhookDelivery(
                            event_id=event_id,
                            endpoint_id=e.id,
                            state="pending",
                            attempts=0,
                            next_attempt_ms=now,
                        )
                    )
        session.commit()
    return len(claimed)


@dataclass
class _Due:
    event_id: str
    endpoint_id: str
    next_attempt_ms: int
    attempts: int
    payload: str


def deliver_due(service: MerchantService, *, limit: int = RUN_DELIVERIES_MAX) -> tuple[int, int]:
    """Attempt up to ``limit`` due deliveries (at most PER_ENDPOINT_MAX per endpoint), endpoints
    in parallel; (attempted, delivered)."""
    now = service.clock_ms()
    rank = (
        func.row_number()
        .over(
            partition_by=col(WebhookDelivery.endpoint_id),
            order_by=(col(WebhookDelivery.next_attempt_ms), col(WebhookDelivery.event_id)),
        )
        .label("rank")
    )
    due = (
        select(
            col(WebhookDelivery.event_id),
            col(WebhookDelivery.endpoint_id),
            col(WebhookDelivery.next_attempt_ms),
            col(WebhookDelivery.attempts),
            rank,
        )
        .where(col(WebhookDelivery.state) == "pending", col(WebhookDelivery.next_attempt_ms) <= now)
        .subquery()
    )
    query = (
        select(
            due.c.event_id,
            due.c.endpoint_id,
            due.c.next_attempt_ms,
            due.c.attempts,
            col(WebhookEvent.payload),
            WebhookEndpoint,
        )
        .join(WebhookEvent, col(WebhookEvent.id) == due.c.event_id)
        .join(WebhookEndpoint, col(WebhookEndpoint.id) == due.c.endpoint_id)
        .where(due.c.rank <= PER_ENDPOINT_MAX, col(WebhookEndpoint.status) == "enabled")
        .order_by(due.c.next_attempt_ms, due.c.event_id)
        .limit(limit)
    )
    groups: dict[str, tuple[WebhookEndpoint, list[_Due]]] = {}
    with Session(service.engine) as session:
        for row in session.execute(query).all():
            event_id, endpoint_id, next_ms, attempts, payload, ep = row
            item = _Due(event_id, endpoint_id, next_ms, attempts, payload)
            groups.setdefault(endpoint_id, (ep, []))[1].append(item)
    if not groups:
        return 0, 0
    deadline = time.monotonic() + RUN_BUDGET_S
    with ThreadPoolExecutor(min(CONCURRENCY, len(groups)), "webhook-delivery") as pool:
        futures = [
            pool.submit(_serve_endpoint, service, ep, items, deadline)
            for ep, items in groups.values()
        ]
        outcomes = [f.result() for f in futures]
    return sum(o[0] for o in outcomes), sum(o[1] for o in outcomes)


def _serve_endpoint(
    service: MerchantService, endpoint: WebhookEndpoint, items: list[_Due], deadline: float
) -> tuple[int, int]:
    """One endpoint's due deliveries, in order, until one fails (or time is up)."""
    attempted = delivered = 0
    with httpx.Client(timeout=ATTEMPT_TIMEOUT_S, follow_redirects=False) as client:
        for item in items:
            if time.monotonic() > deadline:
                break
            lease = _claim(service, item)
            if lease is None:
                continue
            try:
                outcome = _attempt(service, client, endpoint, item)
            except Exception:  # a bug, not the endpoint's fault: the lease retries it later
                log.exception("webhook attempt %s -> %s crashed", item.event_id, endpoint.id)
                break
            attempted += 1
            delivered += outcome.kind == "delivered"
            _record(service, endpoint, item, lease, outcome)
            if outcome.kind != "delivered":
                break
    return attempted, delivered


def _claim(service: MerchantService, item: _Due) -> int | None:
    lease = service.clock_ms() + LEASE_MS
    with Session(service.engine) as session:
        got = session.execute(
            update(WebhookDelivery)
            .where(
                col(WebhookDelivery.event_id) == item.event_id,
                col(WebhookDelivery.endpoint_id) == item.endpoint_id,
                col(WebhookDelivery.state) == "pending",
                col(WebhookDelivery.next_attempt_ms) == item.next_attempt_ms,
            )
            .values(next_attempt_ms=lease)
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
    return lease if got == 1 else None


@dataclass
class _Outcome:
    at_ms: int
    status: int | None
    error: str | None

    @property
    def kind(self) -> str:
        if self.status is not None and 200 <= self.status < 300:
            return "delivered"
        return "gone" if self.status == 410 else "retry"


def _attempt(
    service: MerchantService, client: httpx.Client, endpoint: WebhookEndpoint, item: _Due
) -> _Outcome:
    now = service.clock_ms()
    timestamp = now // 1000
    body = item.payload.encode()
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": item.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(
            signing_secrets(endpoint, now), item.event_id, timestamp, body
        ),
    }
    try:
        url = httpx.URL(endpoint.url)
        host = url.raw_host.decode("ascii")
        address = service.egress.resolve(
            host, url.port or _PORTS[url.scheme], endpoint.livemode == 1
        )
    except EgressRefused as exc:
        return _Outcome(now, None, f"EgressRefused: {exc}"[:ERROR_MAX])
    # connect to the address just checked, and to no other: the name is sent as Host and as
    # TLS server name (SNI, and what the certificate must name)
    headers["host"] = url.netloc.decode("ascii")
    pinned = url.copy_with(host=address)
    try:
        with client.stream(
            "POST", pinned, content=body, headers=headers, extensions={"sni_hostname": host}
        ) as response:
            status = response.status_code  # the body is not read: only the status counts
    except httpx.HTTPError as exc:
        return _Outcome(now, None, f"{type(exc).__name__}: {exc}"[:ERROR_MAX])
    error = None if 200 <= status < 300 else f"HTTP {status}"
    return _Outcome(now, status, error)


def _record(
    service: MerchantService, endpoint: WebhookEndpoint, item: _Due, lease: int, outcome: _Outcome
) -> None:
    """Write an attempt's outcome. A success always counts; a failure reschedules only if the
    claim still holds (a redelivery or a disabling meanwhile has the last word)."""
    key = (
        col(WebhookDelivery.event_id) == item.event_id,
        col(WebhookDelivery.endpoint_id) == item.endpoint_id,
    )
    seen = {
        "attempts": WebhookDelivery.attempts + 1,
        "last_attempt_ms": outcome.at_ms,
        "last_status": outcome.status,
        "last_error": outcome.error,
    }
    attempts = item.attempts + 1
    with Session(service.engine) as session:
        if outcome.kind == "delivered":
            session.execute(
                update(WebhookDelivery)
                .where(*key)
                .values(state="delivered", delivered_at_ms=outcome.at_ms, **seen)
            )
        elif outcome.kind == "gone":
            session.execute(update(WebhookDelivery).where(*key).values(state="failed", **seen))
            disabled = session.execute(
                update(WebhookEndpoint)
                .where(
                    col(WebhookEndpoint.id) == endpoint.id, col(WebhookEndpoint.status) == "enabled"
                )
                .values(
                    status="disabled",
                    disabled_reason=f"the endpoint answered 410 Gone at {outcome.at_ms // 1000}",
                )
            ).rowcount  # type: ignore[attr-defined]
            if disabled:
                _cancel_pending(session, endpoint.id)
                log.info("webhook endpoint %s answered 410: disabled", endpoint.id)
        else:
            if attempts < len(RETRY_SCHEDULE_S):
                after = {
                    "state": "pending",
                    "next_attempt_ms": outcome.at_ms + RETRY_SCHEDULE_S[attempts] * 1000,
                }
            else:
                after = {"state": "failed"}
            held = session.execute(
                update(WebhookDelivery)
                .where(
                    *key,
                    col(WebhookDelivery.state) == "pending",
                    col(WebhookDelivery.next_attempt_ms) == lease,
                )
                .values(**after, **seen)
            ).rowcount  # type: ignore[attr-defined]
            if not held:
                session.execute(update(WebhookDelivery).where(*key).values(**seen))
        session.commit()
