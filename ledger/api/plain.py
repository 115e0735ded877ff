"""Routes as plain ASGI apps, for the API's busiest route.

FastAPI's request handling around a route (reading the body into ``json.loads``, validating the
resulting dict, resolving dependencies, serialising the answer) costs about as much CPU as all
the rest of uvicorn and Starlette for a payment-sized request: measured here, one uvicorn
process answering a parsed payment took 150-160 µs of CPU a request as a FastAPI route and
81-88 µs as a plain route behind the same middleware. ``POST /v1/payments`` is therefore a
``PlainRoute``; every other route is FastAPI's. A plain route still runs inside the app: its
middleware (request ids, body limits) and its exception handlers (the one error shape) apply.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

Model = TypeVar("Model", bound=BaseModel)


def parse_json_body(model: type[Model], content_type: str | None, body: bytes) -> Model:
    """A request body as ``model``, read as FastAPI reads a route's body parameter (only a body
    declared as JSON, ``application/json`` or ``application/*+json``, is JSON; an empty one is
    missing), but parsed and validated in one step by pydantic-core. Errors are FastAPI's
    ``RequestValidationError`` with ``body`` leading each location, so they get the API's one
    error shape."""
    if not body:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing])
    media = (content_type or "").partition(";")[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise RequestValidationError(
            [
                {
                    "type": "model_attributes_type",
                    "loc": ("body",),
                    "msg": "the body is not declared as JSON",
                    "input": None,
                }
            ]
        )
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        for error in errors:
            error["loc"] = ("body", *error["loc"])
        raise RequestValidationError(errors) from None


class PlainRoute:
    """``endpoint(request) -> Response`` as an ASGI app, for a Starlette ``Route``: Starlette
    calls it directly. The endpoint reads its own body (``parse_json_body``) and raises what
    any route raises."""

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.endpoint(Request(scope, receive))
        await response(scope, receive, send)
