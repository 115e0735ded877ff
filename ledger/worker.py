"""An HTTP worker of ``ledger serve`` (started by ``ledger.server.LedgerServer``, not by hand).

It serves the whole API with uvicorn on the listening socket its parent, the writer, bound and
passed down, over a ``RemoteLedger`` linked to the writer. It dies with its parent: a worker
must never answer for a ledger whose writer is gone."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Final

from ledger.link import RemoteLedger
from ledger.process import die_with_parent, settle_heap
from ledger.store.database import make_engine

KEEP_ALIVE_S: Final = 75
"""How long an idle keep-alive connection stays open (uvicorn's default is 5 s). A client that
sends on a connection just as the server closes it gets no answer, with no way to know whether
the request ran: with 5 s, a pilot operator topping up every 2-5 s met that now and then. 75 s is
nginx's default; clients idle longer should expect the close."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ledger.worker", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="the listening socket")
    parser.add_argument("--link", type=Path, required=True, help="the writer's link socket")
    parser.add_argument("--database", required=True)
    parser.add_argument("--kyc-key-file", type=Path, required=True)
    parser.add_argument("--merchant-key-file", type=Path, required=True)
    parser.add_argument(
        "--rate-file", type=Path, help="the merchant keys' rate-limit buckets, shared by workers"
    )
    parser.add_argument("--workers", type=int, default=1, help="how many workers share the port")
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args(argv)
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import uvicorn

    from ledger.server import full_app, open_wallets
    from ledger.wallets.kyc import load_or_create_key

    def lost() -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn stops; in-flight requests answer 503

    remote = RemoteLedger(args.link, make_engine(args.database), on_lost=lost)
    wallets = open_wallets(remote, args.kyc_key_file)
    app, _ = full_app(
        remote,
        wallets,
        load_or_create_key(args.merchant_key_file),
        admission=remote,
        rate_file=args.rate_file,
    )
    settle_heap()
    listener = socket.socket(fileno=args.fd)
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", timeout_keep_alive=KEEP_ALIVE_S
    )
    try:
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        wallets.close()
        remote.close()
        remote.db.dispose()
    sys.exit(0)


if __name__ == "__main__":
    main()
