"""Who is calling the merchant API, at what rate, and replaying which request."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Final

import anyio
from fastapi import Depends, Request
from fastapi.responses import Response
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from merchant_api.keys import KeyChecker, KeyError_, MerchantContext
from merchant_api.models import IdempotencyRecord
from merchant_api.service import MerchantError, MerchantService

IDEMPOTENCY_TTL_MS: Final = 24 * 3600 * 1000
IDEMPOTENCY_KEY_MAX: Final = 255


async def merchant_service(request: Request) -> MerchantService:
    service: MerchantService = request.app.state.merchants
    return service


async def current_merchant(request: Request) -> MerchantContext:
    """The merchant a key (``Authorization: Bearer sk_...``) belongs to, within its rate.

    Async, and so on the event loop: a key checked in the last seconds is in memory, and the
    rate limit's table is shared memory, so neither needs a thread (FastAPI runs a plain
    ``def`` dependency on one: a hop there and back on every merchant request). A key not in
    memory is read from the database on a thread."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.startswith("sk_"):
        raise MerchantError(
            401,
            "missing_api_key",
            "send your merchant key as `Authorization: Bearer sk_test_...` or `sk_live_...`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    checker: KeyChecker = request.app.state.merchant_keys
    token = token.strip()
    try:
        ctx = await checker.authenticate_async(token)
    except KeyError_ as exc:
        raise MerchantError(
            401, exc.code, str(exc), headers={"WWW-Authenticate": "Bearer"}
        ) from None
    wait_s = checker.take(ctx.key_id)
    if wait_s:
        raise MerchantError(
            429,
            "rate_limited",
            "too many requests for this key; slow down",
            headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
        )
    return ctx


MerchantDep = Annotated[MerchantContext, Depends(current_merchant)]
ServiceDep = Annotated[MerchantService, Depends(merchant_service)]


async def idempotent(
    request: Request, ctx: MerchantContext, run: Callable[[], Awaitable[Response]]
) -> Response:
    """Stripe's Idempotency-Key: the same key and body replay the stored response (for 24 h); the
    same key with another body is 422; a request still running is 409 with Retry-After. Its
    database work runs on threads, as ``run`` must do with its own: nothing here holds up the
    event loop, and every other request of the worker, while the database answers."""
    key = request.headers.get("idempotency-key")
    if not key:
        return await run()
    if len(key) > IDEMPOTENCY_KEY_MAX:
        raise MerchantError(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key is at most {IDEMPOTENCY_KEY_MAX} characters",
        )
    body = await request.body()
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode() + body).hexdigest()
    engine = request.app.state.merchants.writes
    replay = await run_in_threadpool(_claim, engine, ctx, key, digest)
    if replay is not None:
        return replay
    try:
        response = await run()
    except BaseException:
        with anyio.CancelScope(shield=True):  # also when the client went away (cancelled)
            await run_in_threadpool(_release, engine, ctx, key)  # it may be retried with the key
        raise
    await run_in_threadpool(_done, engine, ctx, key, response)
    return response


def _done(engine: object, ctx: MerchantContext, key: str, response: Response) -> None:
    with Session(engine) as session:  # type: ignore[arg-type]
        record = session.get(IdempotencyRecord, (ctx.merchant_id, ctx.mode, key))
        assert record is not None
        record.state, record.status_code = "done", response.status_code
        record.body = bytes(response.body)
        session.add(record)
        session.commit()


def _claim(engine: object, ctx: MerchantContext, key: str, digest: str) -> Response | None:
    now = time.time_ns() // 1_000_000
    with Session(engine) as session:  # type: ignore[arg-type]
        record = session.get(IdempotencyRecord, (ctx.merchant_id, ctx.mode, key))
        if record is not None and record.created_at_ms < now - IDEMPOTENCY_TTL_MS:
            session.delete(record)
            session.commit()
            record = None
        if record is None:
            session.add(
                IdempotencyRecord(
                    merchant_id=ctx.merchant_id,
                    livemode=ctx.mode,
                    key=key,
                    request_hash=digest,
                    state="in_progress",
                    created_at_ms=now,
                )
            )
            try:
                session.commit()
                return None
            except IntegrityError:  # a concurrent request with the same key got there first
                raise _in_progress() from None
        if record.request_hash != digest:
            raise MerchantError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request",
                "Idempotency-Key",
            )
        if record.state != "done":
            raise _in_progress()
        return Response(
            record.body or b"",
            record.status_code or 200,
            media_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )


def _in_progress() -> MerchantError:
    return MerchantError(
        409,
        "idempotency_key_in_progress",
        "a request with this key is still running; retry shortly",
        headers={"Retry-After": "1"},
    )


def _release(engine: object, ctx: MerchantContext, key: str) -> None:
    with Session(engine) as session:  # type: ignore[arg-type]
        record = session.get(IdempotencyRecord, (ctx.merchant_id, ctx.mode, key))
        if record is not None and record.state == "in_progress":
            session.delete(record)
            session.commit()
