"""HTTP plumbing shared by ``Client`` and ``AsyncClient``: one request, retried safely.

A :class:`Call` says what to send; :class:`SyncTransport` / :class:`AsyncTransport` send it
through an ``httpx`` client (the one I/O seam: tests hand in a ``TestClient``, an
``ASGITransport`` or a ``MockTransport``). Stripe's rules:

* every POST carries an ``Idempotency-Key`` (uuid4), the same on every retry of that call;
* retried: connection errors and timeouts, 429, 5xx and 409 ``idempotency_key_in_progress``;
  nothing else (another 409 is a conflict: retrying cannot change it);
* the delay is ``Retry-After`` when the server sends one (up to ``RETRY_AFTER_MAX_S``), else
  capped, jittered exponential backoff;
* a wallet-signed request is signed again on every attempt: the ledger accepts each signature
  once, so resending the first one would be refused as a replay.

Retrying a POST is safe because every body that moves money or creates something carries a
client-chosen id: the ledger answers a repeated id with its first answer (``replayed: true``).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final, Literal

import httpx

from wallet_sdk._errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    error_for_status,
)
from wallet_sdk.keys import WalletKeys

__all__ = ["AsyncTransport", "Call", "RetryPolicy", "SyncTransport"]

USER_AGENT: Final = "wallet-sdk-python/0.1"
INITIAL_DELAY_S: Final = 0.5
MAX_DELAY_S: Final = 8.0
RETRY_AFTER_MAX_S: Final = 60.0
"""A ``Retry-After`` longer than this is not waited for; the backoff applies instead."""
MAX_RETRIES_LIMIT: Final = 10
IN_PROGRESS: Final = "idempotency_key_in_progress"
"""The one 409 that is retried: a request with the same Idempotency-Key is still running."""
RETRY_ERRORS: Final = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
"""No answer, or a broken one: worth another attempt. A bad URL or a proxy refusing is not."""

Auth = Literal["none", "api_key", "wallet"]


@dataclass(frozen=True, slots=True)
class Call:
    """One API request: method, path, body or query, and who authenticates it."""

    method: Literal["GET", "POST"]
    path: str
    json: dict[str, Any] | None = None
    params: dict[str, str | int] | None = None
    auth: Auth = "none"
    keys: WalletKeys | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise TypeError("max_retries is an int")
        if not 0 <= self.max_retries <= MAX_RETRIES_LIMIT:
            raise ValueError(f"max_retries is 0..{MAX_RETRIES_LIMIT}")

    def delay_s(self, retry: int, retry_after: str | None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        hinted = _retry_after_s(retry_after)
        if hinted is not None and 0 <= hinted <= RETRY_AFTER_MAX_S:
            return hinted
        backoff = min(INITIAL_DELAY_S * 2 ** (retry - 1), MAX_DELAY_S)
        return max(INITIAL_DELAY_S, backoff * random.uniform(0.5, 1.0))  # full delay +- jitter


def _retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None if absent or garbled."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _retryable(response: httpx.Response) -> bool:
    if response.status_code == 409:  # only "the same request is still running" is worth a retry
        return _error_code(response) == IN_PROGRESS
    return response.status_code == 429 or response.status_code >= 500


def _error_code(response: httpx.Response) -> str | None:
    try:
        body: Any = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _error(response: httpx.Response) -> APIError:
    """The typed exception for an error answer in the ledger's one error shape."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": response.text[:200] or response.reason_phrase}
    cls = error_for_status(response.status_code)
    return cls(
        str(error.get("message") or "error"),
        http_status=response.status_code,
        code=error.get("code"),
        param=error.get("param"),
        request_id=error.get("request_id") or response.headers.get("request-id"),
        body=body,
    )


def _decode(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 300:
        raise _error(response)
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise APIError(
            "the ledger's answer is not a JSON object",
            http_status=response.status_code,
            request_id=response.headers.get("request-id"),
        )
    return data


class _Base:
    """What both transports share: building (and signing) each attempt's request."""

    def __init__(
        self,
        client: httpx.Client | httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str | None,
        timeout_s: float,
        retry: RetryPolicy,
    ) -> None:
        self._client = client
        self._prefix = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout_s = timeout_s
        self.retry = retry

    def _build(self, call: Call, idempotency_key: str | None) -> httpx.Request:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        if call.auth == "api_key":
            if not self._api_key:
                raise AuthenticationError(
                    f"{call.method} {call.path} needs an operator API key: Client(api_key=...)",
                    code="missing_api_key",
                )
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = self._client.build_request(
            call.method,
            self._prefix + call.path,
            params=call.params,
            json=call.json,
            headers=headers,
            timeout=self._timeout_s,
        )
        if call.auth == "wallet":  # signed last: over the exact path, query and body bytes
            assert call.keys is not None, "a wallet-signed call names its keys"
            path = request.url.raw_path.decode("ascii")
            request.headers.update(call.keys.sign_request(call.method, path, request.content))
        return request

    def _idempotency_key(self, call: Call) -> str | None:
        return str(uuid.uuid4()) if call.method == "POST" else None

    def _give_up(self, call: Call, exc: httpx.TransportError, attempts: int) -> APIConnectionError:
        return APIConnectionError(
            f"no answer from the ledger for {call.method} {call.path} after {attempts} "
            f"attempt(s): {type(exc).__name__}: {exc}"
        )


class SyncTransport(_Base):
    _client: httpx.Client

    def send(self, call: Call) -> dict[str, Any]:
        """Send ``call``, retrying as the module says; the answer's JSON object, or raise."""
        key = self._idempotency_key(call)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._client.send(self._build(call, key))
            except httpx.TransportError as exc:
                if attempt > self.retry.max_retries or not isinstance(exc, RETRY_ERRORS):
                    raise self._give_up(call, exc, attempt) from exc
                _sleep(self.retry.delay_s(attempt, None))
                continue
            if _retryable(response) and attempt <= self.retry.max_retries:
                response.close()
                _sleep(self.retry.delay_s(attempt, response.headers.get("retry-after")))
                continue
            return _decode(response)


class AsyncTransport(_Base):
    _client: httpx.AsyncClient

    async def send(self, call: Call) -> dict[str, Any]:
        """The async twin of :meth:`SyncTransport.send`."""
        key = self._idempotency_key(call)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._client.send(self._build(call, key))
            except httpx.TransportError as exc:
                if attempt > self.retry.max_retries or not isinstance(exc, RETRY_ERRORS):
                    raise self._give_up(call, exc, attempt) from exc
                await _async_sleep(self.retry.delay_s(attempt, None))
                continue
            if _retryable(response) and attempt <= self.retry.max_retries:
                await response.aclose()
                await _async_sleep(self.retry.delay_s(attempt, response.headers.get("retry-after")))
                continue
            await response.aread()
            return _decode(response)


def _sleep(seconds: float) -> None:
    """The sync pause between attempts (a module function, so tests can record delays)."""
    time.sleep(seconds)


async def _async_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)
