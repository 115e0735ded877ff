"""One error shape for every failure, and the ASGI middleware every response passes through.

    {"error": {"type", "code", "message", "param", "request_id"}}

Every response carries a ``Request-Id`` header; bodies over ``BODY_MAX_BYTES`` are refused before
they are read.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger.api.models import parse_id
from ledger.api.responses import JSONResponse
from ledger.auth import AuthError
from ledger.domain import BATCH_MAX
from ledger.sequencer import LedgerUnavailable, Overloaded

log = logging.getLogger("ledger.api")

API_VERSION: Final = "2026-11-22"
"""Sent as ``Ledger-Version`` on every response: the dated version of this API's contract."""

BODY_MAX_BYTES: Final = 8 * 1024 * 1024
"""Largest request body: a full batch of BATCH_MAX transfers with metadata fits."""

STATUS_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
}


class APIError(Exception):
    """An error answered with the standard shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param
        self.headers = headers or {}


def id_or_404(value: str, thing: str, param: str) -> int:
    """A path's id as its 128-bit integer; a malformed one names nothing, so it is the same 404
    as an id that does not exist (``{thing}_not_found``)."""
    try:
        return parse_id(value)
    except ValueError:
        raise APIError(
            404, f"{thing}_not_found", f"no such {thing.replace('_', ' ')}", param
        ) from None


def request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def error_response(request: Request, err: APIError) -> JSONResponse:
    body = {
        "error": {
            "type": STATUS_TYPES.get(err.status, "api_error"),
            "code": err.code,
            "message": err.message,
            "param": err.param,
            "request_id": request_id(request),
        }
    }
    return JSONResponse(body, status_code=err.status, headers=err.headers)


_LOCATIONS: Final = frozenset({"body", "query", "path", "header", "cookie"})


def _param(loc: tuple[Any, ...]) -> str | None:
    """The parameter as a dotted path (``transfers.0.amount``, ``limit``), without pydantic's
    leading location; only the first element is one (a metadata key may be called "body")."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    return ".".join(parts) or None


def _describe(error: dict[str, Any]) -> tuple[int, str, str]:
    """(status, code, message) for one pydantic error, in words a developer can act on."""
    kind, loc = error["type"], error["loc"]
    field = str(loc[-1]) if loc else ""
    if kind == "json_invalid":
        return (
            400,
            "invalid_json",
            f"the body is not valid JSON: {error.get('ctx', {}).get('error', '')}",
        )
    if field == "amount" and kind in ("int_type", "int_parsing", "int_from_float"):
        got = error.get("input")
        return (
            422,
            "amount_not_integer",
            f"amount must be an integer number of fen (1 yuan = 100 fen); got {got!r}. "
            "Floats and strings are not accepted for money.",
        )
    if kind == "too_long" and field in ("transfers", "accounts", "payments"):
        return (
            422,
            "batch_too_large",
            f"at most {BATCH_MAX} {field} per request; split the batch",
        )
    if tuple(loc) == ("body",) and kind in ("model_attributes_type", "model_type", "dict_type"):
        return (
            400,
            "invalid_json",
            "the body must be a JSON object, sent with Content-Type: application/json",
        )
    if kind == "extra_forbidden":
        return 422, "unknown_field", f"unknown field {field!r}"
    if kind == "missing":
        return 422, "missing_field", f"{field} is required"
    param = _param(loc)
    return 422, "invalid_field", f"{param}: {error['msg']}" if param else str(error["msg"])


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        status, code, message = _describe(errors[0]) if errors else (422, "invalid_request", "")
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem(s))"
        param = _param(tuple(errors[0]["loc"])) if errors and code != "invalid_json" else None
        return error_response(request, APIError(status, code, message, param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status_code, "http_error"
        )
        return error_response(request, APIError(exc.status_code, code, str(exc.detail)))

    @app.exception_handler(AuthError)
    async def _auth(request: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"}
        return error_response(request, APIError(401, exc.code, str(exc), headers=headers))

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)}
        message = "the ledger is at capacity; nothing was accepted. Retry after the delay."
        return error_response(request, APIError(503, "overloaded", message, headers=headers))

    @app.exception_handler(LedgerUnavailable)
    async def _unavailable(request: Request, exc: LedgerUnavailable) -> JSONResponse:
        message = f"{exc}. Retry with the same ids: the ledger answers each id once."
        headers = {"Retry-After": "1"}
        return error_response(
            request, APIError(503, "ledger_unavailable", message, headers=headers)
        )


class RequestContextMiddleware:
    """Gives each request an id (``Request-Id`` header, in errors too) and caps body size.

    Pure ASGI, because BaseHTTPMiddleware costs a task per request."""

    def __init__(self, app: ASGIApp, body_max_bytes: int = BODY_MAX_BYTES) -> None:
        self.app = app
        self.body_max_bytes = body_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Request ids name a request in logs; they need not be secret, so they come from the
        # process's own generator (reseeded after a fork), not a system call per request.
        rid = f"req_{random.getrandbits(64):016x}"
        scope.setdefault("state", {})["request_id"] = rid
        header = rid.encode()

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"request-id", header),
                    (b"ledger-version", API_VERSION.encode()),
                ]
            await send(message)

        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.body_max_bytes):
            await self._too_large(rid, send_with_id)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.body_max_bytes:
                raise _BodyTooLarge(self.body_max_bytes)
            return message

        # A body with a Content-Length (checked above) and no Transfer-Encoding is framed by
        # the server to that length: only other bodies (chunked) are counted as they come.
        framed = length is not None and b"transfer-encoding" not in headers
        try:
            await self.app(scope, receive if framed else counted_receive, send_with_id)
        except _BodyTooLarge:
            if not started:
                await self._too_large(rid, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s (%s)", scope["method"], scope["path"], rid)
            if not started:
                message = "an unexpected error; it has been logged with this request id"
                await _send_error(send_with_id, 500, "api_error", "internal_error", message, rid)

    async def _too_large(self, rid: str, send: Send) -> None:
        message = _BodyTooLarge(self.body_max_bytes).detail
        await _send_error(send, 413, "invalid_request_error", "body_too_large", message, rid)


async def _send_error(
    send: Send, status: int, kind: str, code: str, message: str, rid: str
) -> None:
    error = {"type": kind, "code": code, "message": message, "param": None, "request_id": rid}
    response = JSONResponse({"error": error}, status, {"ledger-version": API_VERSION})
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class _BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a body without Content-Length outgrows the limit.

    An HTTPException because FastAPI's body reader turns any other exception into a 400 "error
    parsing the body" but lets these through, to the handler above (413 body_too_large)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request bodies are limited to {limit} bytes")
