"""Consent to credit assessment through the API: granted and revoked by the borrower's own
signature, enforced on every read, every read journaled, features from real payments."""

from __future__ import annotations

import datetime
import json
import time
import uuid
from typing import Any

import pytest
from nacl.signing import SigningKey

from ledger import signing
from ledger.credit.consent import READ
from ledger.store.queries import Reader
from ledger.verify import verify
from tests.test_wallets import START, W, World, b64

DAY = datetime.timedelta(days=1)


def signed(
    world: World, w: W, method: str, path: str, body: Any = None, key: SigningKey | None = None
) -> Any:
    """A request signed with the wallet's key (Wallet-Id, Wallet-Timestamp, Wallet-Signature)."""
    time.sleep(0.002)  # a fresh timestamp: the same signature twice is refused as a replay
    raw = json.dumps(body).encode() if body is not None else b""
    ts = time.time_ns() // 1_000_000
    signature = (key or w.key).sign(signing.read_message(method, path, ts, raw)).signature
    headers = {
        "Wallet-Id": w.id, "Wallet-Timestamp": str(ts), "Wallet-Signature": b64(signature),
        "Content-Type": "application/json",
    }  # fmt: skip
    return world.api.request(method, path, content=raw, headers=headers)


def grant(world: World, w: W, **fields: Any) -> Any:
    body = {"lender": "op_a", "expires_at_ms": world.now_ms() + 30 * 86_400_000, **fields}
    return signed(world, w, "POST", f"/v1/credit/borrowers/{w.id}/consents", body)


def features(world: World, w: W, consent: str, headers: dict[str, str], **query: str) -> Any:
    params = {"consent_id": consent, **query}
    return world.api.get(f"/v1/credit/borrowers/{w.id}/features", params=params, headers=headers)


@pytest.fixture
def shop(world: World) -> tuple[W, W, W]:
    """A merchant paid four times over 70 days by two customers (A three times, B once)."""
    merchant = world.wallet(1, bank=1)
    a, b = world.wallet(2, bank=50_000), world.wallet(2, bank=50_000)
    world.top_up(a, 10_000)
    world.top_up(b, 5_000)
    for day, payer, amount in ((1, a, 1_000), (50, b, 2_000), (60, a, 3_000), (70, a, 4_000)):
        world.at(START + day * DAY)
        assert world.pay(payer, merchant.id, amount)["result"] == "ok"
    world.at(START + 75 * DAY)
    return merchant, a, b


def test_features_under_a_live_consent_from_real_payments(
    world: World, shop: tuple[W, W, W]
) -> None:
    merchant, a, _ = shop
    made = grant(world, merchant)
    assert made.status_code == 201, made.text
    consent = made.json()
    assert consent["status"] == "active" and consent["accounts"] == [merchant.id]
    read = features(world, merchant, consent["id"], world.op)
    assert read.status_code == 200, read.text
    f = read.json()["features"]
    assert (f["takings_30d"], f["payments_30d"]) == (9_000, 3)
    assert (f["takings_90d"], f["payments_90d"]) == (10_000, 4)
    assert f["average_ticket_30d"] == 3_000
    assert f["active_day_ratio_30d"] == pytest.approx(3 / 30)
    assert f["payer_concentration_90d"] == pytest.approx(0.8**2 + 0.2**2)
    assert f["repeat_payer_share_90d"] == pytest.approx(0.8)
    assert f["tenure_days"] == 74  # opened a few ns after START: 75 days less a few ns
    assert f["growth_30d"] is None, "nothing in the 30 days before: growth is undefined"
    assert f["inflow_outflow_ratio_90d"] is None and f["refund_ratio_30d"] == 0
    assert set(read.json()) == {"borrower", "consent", "as_of_ms", "window_days", "features"}

    # the read was journaled, against the borrower's wallet, naming lender and consent
    reader = Reader(world.service.store.engine, world.service.origin)
    n = world.service.sequencer.engine.state.accounts[merchant.int_id].n
    reads = [r.data() for _, r in reader.records(n, frozenset({READ}))]
    assert reads == [
        {
            "wallet": merchant.id, "consent": consent["id"], "lender": "op_a",
            "purpose": "credit_assessment", "what": "cash_flow_features", "window_days": 365,
        }
    ]  # fmt: skip
    listed = signed(world, merchant, "GET", f"/v1/credit/borrowers/{merchant.id}/consents")
    assert listed.json()["data"][0]["reads"] == 1
    assert verify(world.service.store.engine).ok
    del a


def test_no_live_consent_no_features(world: World, shop: tuple[W, W, W]) -> None:
    merchant, _, _ = shop
    unknown = str(uuid.uuid4())
    assert features(world, merchant, unknown, world.op).json()["error"]["code"] == (
        "consent_not_found"
    )
    consent = grant(world, merchant).json()["id"]
    other_lender = features(world, merchant, consent, world.op_b)
    assert other_lender.status_code == 404, "another lender's consent is no consent"
    wrong = features(world, merchant, consent, world.op, purpose="marketing")
    assert wrong.status_code == 403
    assert wrong.json()["error"]["code"] == "purpose_not_consented"
    assert features(world, merchant, consent, world.cb).status_code == 404  # not its lender

    revoked = signed(
        world, merchant, "POST", f"/v1/credit/borrowers/{merchant.id}/consents/{consent}/revoke"
    )
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    after = features(world, merchant, consent, world.op)
    assert after.status_code == 403 and after.json()["error"]["code"] == "consent_revoked"

    short = grant(world, merchant, expires_at_ms=world.now_ms() + 86_400_000).json()["id"]
    world.at(START + 77 * DAY)
    expired = features(world, merchant, short, world.op)
    assert expired.status_code == 403 and expired.json()["error"]["code"] == "consent_expired"

    reader = Reader(world.service.store.engine, world.service.origin)
    n = world.service.sequencer.engine.state.accounts[merchant.int_id].n
    assert reader.records(n, frozenset({READ})) == [], "a refused read computes and logs nothing"


def test_a_consent_covers_only_its_window(world: World, shop: tuple[W, W, W]) -> None:
    merchant, _, _ = shop
    consent = grant(world, merchant, window_days=30).json()["id"]
    f = features(world, merchant, consent, world.op).json()["features"]
    assert (f["takings_90d"], f["payments_90d"]) == (9_000, 3), "nothing older than 30 days"


def test_only_the_borrower_grants_and_bad_consents_are_refused(
    world: World, shop: tuple[W, W, W]
) -> None:
    merchant, a, _ = shop
    path = f"/v1/credit/borrowers/{merchant.id}/consents"
    body = {"lender": "op_a", "expires_at_ms": world.now_ms() + 86_400_000}
    by_operator = world.api.post(path, json=body, headers=world.op)
    assert by_operator.status_code == 403
    assert by_operator.json()["error"]["code"] == "borrower_signature_required"
    by_other_wallet = signed(world, a, "POST", path, body)
    assert by_other_wallet.status_code == 403
    forged = signed(world, merchant, "POST", path, body, key=SigningKey.generate())
    assert forged.status_code == 401
    cases = [
        ({"window_days": 30.0}, 422, None),
        ({"window_days": 0}, 422, None),
        ({"expires_at_ms": world.now_ms() - 1}, 422, "expiry_invalid"),
        ({"lender": "no_such_bank"}, 422, "lender_not_found"),
        ({"purpose": "marketing"}, 422, "purpose_invalid"),
        ({"accounts": [a.id]}, 422, "account_not_yours"),
        ({"surprise": 1}, 422, None),
    ]
    for change, status, code in cases:
        answer = signed(world, merchant, "POST", path, {**body, **change})
        assert answer.status_code == status, (change, answer.text)
        if code is not None:
            assert answer.json()["error"]["code"] == code, (change, answer.text)
    assert signed(world, merchant, "GET", path).json()["data"] == [], "nothing was granted"
