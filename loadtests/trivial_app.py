"""The framework's ceiling: a FastAPI app that parses a signed payment and answers at once.

``POST /v1/payments`` takes exactly the body the ledger's ``POST /v1/payments`` takes, parsed
into the ledger's own pydantic model (``ledger.api.models.SignedPaymentIn``: UUID ids, strict
integer fen, a base64 signature of 64 bytes), so the JSON and validation work per request is the
same. It then answers a small JSON object: no signature check, no queue, no journal, no
database. Whatever a signed, journaled, committed payment costs beyond this endpoint is the
ledger's own work; ``loadtests.http_bench`` measures both in one run and reports the ratio.

``plain_app`` answers the same way from a plain route (``ledger.api.plain``), as the ledger's own
``POST /v1/payments`` is served: the same parsing and validation, without FastAPI's request
handling. ``loadtests.http_bench`` reports the ledger's ratio to both.

It runs under uvicorn with the settings ``ledger serve``'s HTTP workers use (``loop`` and
``http`` left at ``auto``, i.e. uvloop and httptools as installed, ``log_level="warning"``), in
one process or in ``--workers`` processes::

    python -m loadtests.trivial_app --port 8001 [--workers 2] [--plain]
"""

from __future__ import annotations

import argparse
from typing import Final

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ledger.api.models import SignedPaymentIn, format_id
from ledger.api.plain import PlainPost

PATH: Final = "/v1/payments"

app = FastAPI(title="trivial payment endpoint (loadtests.http_bench's ceiling)")


@app.post(PATH)
async def create_payment(body: SignedPaymentIn) -> JSONResponse:
    """Parse the payment (422 on any field the ledger would refuse) and answer ``ok``."""
    return JSONResponse({"id": format_id(body.id), "result": "ok", "replayed": False})


async def create_payment_plain(_request: Request, body: SignedPaymentIn) -> JSONResponse:
    """The same, as a plain route (``PlainPost`` has parsed the body)."""
    return await create_payment(body)


async def healthz() -> dict[str, str]:
    return {"status": "ok"}


app.get("/healthz")(healthz)
plain_app = FastAPI(title="trivial payment endpoint as a plain route")
plain_app.router.routes.append(
    PlainPost(PATH, create_payment_plain, SignedPaymentIn, "ok", "payments").route()
)
plain_app.get("/healthz")(healthz)


def main(argv: list[str] | None = None) -> None:
    """Serve the app as ``ledger serve`` serves the ledger (see ``ledger.cli.serve``)."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--plain", action="store_true", help="serve plain_app")
    args = parser.parse_args(argv)
    name = "plain_app" if args.plain else "app"
    target = globals()[name] if args.workers == 1 else f"loadtests.trivial_app:{name}"
    uvicorn.run(target, host=args.host, port=args.port, log_level="warning", workers=args.workers)


if __name__ == "__main__":
    main()
