"""Quickstart: open two wallets, top one up, pay the other, verify the receipt offline.

Run it against a ledger (``ledger serve`` prints its first central-bank key)::

    export LEDGER_URL=http://127.0.0.1:8000
    export LEDGER_CB_KEY=...            # the central bank's API key
    export LEDGER_OPERATOR_KEY=...      # an operator's key (POST /v1/api_keys), optional
    export LEDGER_OPERATOR=demo_bank    # the operator that key belongs to (default demo_bank)
    python examples/quickstart.py

Without ``LEDGER_OPERATOR_KEY`` the script asks the central bank for one. The first part is the
one-time setup a real operator has long done (authorisation, reserves, e-CNY issued to it, a
customer's bank account with cash in it); it talks plain HTTP because it is the central bank's
and the bank's business, not the wallet app's. The second part is the wallet app: the SDK.
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import Any

import httpx

from wallet_sdk import Client, Money, verify_receipt

URL = os.environ.get("LEDGER_URL", "http://127.0.0.1:8000")
OPERATOR = os.environ.get("LEDGER_OPERATOR", "demo_bank")


def post(http: httpx.Client, path: str, body: dict[str, Any], key: str) -> dict[str, Any]:
    """One setup request; stop with the ledger's answer if it is refused."""
    response = http.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
    answer: dict[str, Any] = response.json()
    refused = [r for r in answer.get("results", []) if r["result"] != "ok"]
    if response.status_code >= 300 or refused:
        sys.exit(f"{path}: {answer}")
    return answer


def set_up_operator(cb_key: str, operator_key: str | None) -> tuple[str, str]:
    """Authorise the operator and fund it with e-CNY; open a customer's bank account with
    ¥1,000 of cash in it. Returns (operator key, bank account id). Safe to run again."""
    with httpx.Client(base_url=URL, timeout=10) as http:
        if operator_key is None:
            created = post(
                http, "/v1/api_keys", {"operator": OPERATOR, "name": "quickstart"}, cb_key
            )
            operator_key = str(created["key"])
        post(http, "/v1/operators", {"operator": OPERATOR}, cb_key)  # a replay if it exists
        reserves = {"id": str(uuid.uuid4()), "amount": 1_000_000}
        post(http, f"/v1/operators/{OPERATOR}/reserve_deposits", reserves, cb_key)
        issuance = {"id": str(uuid.uuid4()), "operator": OPERATOR, "amount": 1_000_000}
        post(http, "/v1/issuances", issuance, cb_key)
        bank = str(uuid.uuid4())
        post(http, "/v1/bank_accounts", {"id": bank, "owner": "alice"}, operator_key)
        cash = {"id": str(uuid.uuid4()), "amount": 100_000}
        post(http, f"/v1/bank_accounts/{bank}/deposits", cash, operator_key)
    return operator_key, bank


def main() -> int:
    operator_key, bank = set_up_operator(
        os.environ["LEDGER_CB_KEY"], os.environ.get("LEDGER_OPERATOR_KEY") or None
    )

    with Client(URL, api_key=operator_key) as client:
        # Keys are made on this device; the ledger only ever sees the public key.
        alice = client.create_wallet(
            kyc={"phone": "+8613800000000"}, wallet_class=4, linked_bank_account=bank
        )
        shop = client.create_wallet(
            kyc={"phone": "+8613900000000"}, wallet_class=4, kind="merchant"
        )
        client.top_up(alice, Money.yuan("50.00"))  # bank money -> e-CNY

        # Signed by Alice's key here; the receipt is verified before pay() returns.
        payment = client.pay(alice, shop, Money.yuan("12.30"), metadata={"order": "A-1001"})
        print(f"paid {payment.amount} from {alice.wallet_id} to {shop.wallet_id}")

        # Anyone holding the ledger's public key can check it again, offline.
        receipt = payment.receipt
        ok = verify_receipt(receipt, client.public_key())
        print(
            f"receipt verified: {ok} (entry {receipt['leaf_index']} of a tree of "
            f"{receipt['tree_size']} entries signed by {receipt['checkpoint']['origin']})"
        )
        print(f"balances: alice {client.balance(alice)}, shop {client.balance(shop)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
