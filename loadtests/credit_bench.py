"""Latency of ``POST /v1/credit/applications`` (issue #6: p99 under 200 ms).

Builds a fresh ledger (SQLite in a temporary folder), the ledger's API in-process (FastAPI's
test client: no network, so the figure is the decision's own cost), a scorecard trained on a
synthetic pilot of 60 days (``ledger credit synth`` + ``train``), and ``--merchants`` shops,
each paid ``--payments`` times by 40 customers and each granting op_a a consent. It then times
``--applications`` decisions, round-robin over the shops: each reads the shop's features under
its consent (journaled), scores them, applies the policy and journals the decision.

Run::

    python -m loadtests.credit_bench [--applications 300] [--merchants 10] [--payments 400]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from nacl.signing import SigningKey

from ledger import signing
from ledger.auth import create_api_key
from ledger.config import Settings
from ledger.credit import synthetic
from ledger.credit.decisions import MODEL_ENV
from ledger.credit.scorecard import Scorecard, labelled
from ledger.server import running


def _b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode()


def _ok(response: Any) -> Any:
    if response.status_code not in (200, 201):
        raise SystemExit(f"{response.request.url}: {response.status_code} {response.text[:300]}")
    return response.json()


def run(applications: int, merchants: int, payments: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="credit-bench-"))
    truth = synthetic.plan(600, 1800, 60, 3)
    table = synthetic.features_table(truth, synthetic.sales(truth, 1800, 60, 3), 60)
    Scorecard.train(labelled(table, "defaulted", "yes")).save(work / "model")
    os.environ[MODEL_ENV] = str(work / "model")
    settings = Settings.from_env(f"sqlite:///{work}/ledger.db", work / "ledger.key")
    with running(settings) as (app, ledger), TestClient(app) as api:
        engine = ledger.store.engine
        cb = {"Authorization": "Bearer " + create_api_key(engine, "central_bank", "").secret}
        op = {"Authorization": "Bearer " + create_api_key(engine, "operator", "op_a").secret}
        _ok(api.post("/v1/operators", json={"operator": "op_a"}, headers=cb))
        money = {"id": str(uuid.uuid4()), "amount": 10**10}
        _ok(api.post("/v1/operators/op_a/reserve_deposits", json=money, headers=cb))
        issue = {"id": str(uuid.uuid4()), "operator": "op_a", "amount": 10**10}
        _ok(api.post("/v1/issuances", json=issue, headers=cb))
        bank = str(uuid.uuid4())
        _ok(api.post("/v1/bank_accounts", json={"id": bank, "owner": "bench"}, headers=op))
        deposit = {"id": str(uuid.uuid4()), "amount": 10**10}
        _ok(api.post(f"/v1/bank_accounts/{bank}/deposits", json=deposit, headers=op))

        def wallet() -> tuple[str, SigningKey]:
            key, wid = SigningKey.generate(), str(uuid.uuid4())
            body = {
                "id": wid, "class": 1, "public_key": _b64(bytes(key.verify_key)),
                "kyc": {"name": "Bench", "id_number": "310101", "phone": "+8613800000000"},
                "linked_bank_account": bank,
            }  # fmt: skip
            _ok(api.post("/v1/wallets", json=body, headers=op))
            return wid, key

        shops = [wallet() for _ in range(merchants)]
        payers = [wallet() for _ in range(40)]
        for wid, _ in payers:
            top_up = {"id": str(uuid.uuid4()), "amount": 10**7}
            _ok(api.post(f"/v1/wallets/{wid}/top_ups", json=top_up, headers=op))
        expires = time.time_ns() // 1_000_000 + 3_600_000
        for shop, _ in shops:
            batch = []
            for i in range(payments):
                payer, key = payers[i % len(payers)]
                tid = uuid.uuid4()
                amount = 2_000 + 13 * (i % 200)
                auth = signing.sign_payment(
                    key, 1, tid.int, uuid.UUID(payer).int, uuid.UUID(shop).int, amount, "CNY",
                    expires,
                )  # fmt: skip
                batch.append({
                    "id": str(tid), "payer": payer, "payee": shop, "amount": amount,
                    "expires_at_ms": expires, "key_version": 1,
                    "signature": _b64(auth.signature),
                })  # fmt: skip
            _ok(api.post("/v1/payments/batch", json={"payments": batch}))
        consents = []
        for shop, key in shops:
            path = f"/v1/credit/borrowers/{shop}/consents"
            raw = json.dumps({"lender": "op_a", "expires_at_ms": expires}).encode()
            ts = time.time_ns() // 1_000_000
            sig = key.sign(signing.read_message("POST", path, ts, raw)).signature
            headers = {
                "Wallet-Id": shop, "Wallet-Timestamp": str(ts), "Wallet-Signature": _b64(sig),
                "Content-Type": "application/json",
            }  # fmt: skip
            consents.append((shop, _ok(api.post(path, content=raw, headers=headers))["id"]))
        latencies, outcomes = [], {"approved": 0, "declined": 0}
        for i in range(applications):
            shop, consent = consents[i % len(consents)]
            body = {"borrower": shop, "consent_id": consent, "amount": 50_000}
            started = time.perf_counter()
            decided = _ok(api.post("/v1/credit/applications", json=body, headers=op))
            latencies.append((time.perf_counter() - started) * 1000)
            outcomes[decided["decision"]] += 1
    latencies.sort()
    return {
        "applications": applications,
        "merchants": merchants,
        "payments_per_merchant": payments,
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
        "max_ms": round(latencies[-1], 1),
        "outcomes": outcomes,
        "where": "in-process (FastAPI test client), SQLite",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--applications", type=int, default=300)
    parser.add_argument("--merchants", type=int, default=10)
    parser.add_argument("--payments", type=int, default=400)
    args = parser.parse_args()
    print(json.dumps(run(args.applications, args.merchants, args.payments)))


if __name__ == "__main__":
    main()
