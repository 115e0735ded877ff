"""Routes as plain ASGI apps, for the API's busiest routes.

FastAPI's request handling around a route (reading the body into ``json.loads``, validating the
resulting dict, resolving dependencies, serialising the answer) costs about as much CPU as all
the rest of uvicorn and Starlette for a payment-sized request: measured here, one uvicorn
process answering a parsed payment took 150-160 µs of CPU a request as a FastAPI route and
81-88 µs as a plain route behind the same middleware. ``POST /v1/payments`` is therefore a
``PlainPost``, as is ``POST /v1/payments/batch`` (pydantic-core parses a batch of 1,000 in
about half the time of ``json.loads`` and validation of the result); every other route is
FastAPI's. A plain route still runs inside the app: its middleware (request ids, body limits)
and its exception handlers (the one error shape) apply.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.routing import Route
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


@dataclass(frozen=True)
class PlainPost:
    """A ``POST`` route served plainly: its body is parsed as ``body`` (``parse_json_body``),
    then ``endpoint(request, parsed)`` answers, raising what any route raises. ``route()`` is
    the Starlette route to put in a router; ``document`` adds the operation, with the body's
    schema, to an OpenAPI document (FastAPI's lists only its own routes)."""

    path: str
    endpoint: Callable[[Request, Any], Awaitable[Response]]
    body: type[BaseModel]
    answer: str
    """What a 200 answer holds, for the document."""
    tag: str

    def route(self) -> Route:
        app = _Asgi(self.endpoint, self.body)
        return Route(self.path, app, methods=["POST"], include_in_schema=False)

    def document(self, openapi: dict[str, Any]) -> None:
        schema = self.body.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(schema.pop("$defs", {}))
        schemas[self.body.__name__] = schema
        json_body = {"schema": {"$ref": f"#/components/schemas/{self.body.__name__}"}}
        openapi["paths"].setdefault(self.path, {})["post"] = {
            "tags": [self.tag],
            "summary": self.endpoint.__name__.replace("_", " ").title(),
            "description": inspect.cleandoc(self.endpoint.__doc__ or ""),
            "operationId": re.sub(r"\W", "_", self.endpoint.__name__ + self.path) + "_post",
            "requestBody": {"required": True, "content": {"application/json": json_body}},
            "responses": {
                "200": {"description": self.answer},
                "400": {"description": "The body is not a JSON object."},
                "422": {"description": "A field is missing or invalid (the error names it)."},
            },
        }


class _Asgi:
    """An endpoint and its body's model as the ASGI app Starlette's ``Route`` calls directly."""

    def __init__(
        self, endpoint: Callable[[Request, Any], Awaitable[Response]], body: type[BaseModel]
    ) -> None:
        self.endpoint, self.body = endpoint, body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        content_type = request.headers.get("content-type")
        parsed = parse_json_body(self.body, content_type, await request.body())
        response = await self.endpoint(request, parsed)
        await response(scope, receive, send)
