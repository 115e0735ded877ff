"""Nightly re-scoring with Dask on a 2-worker LocalCluster equals the single-process result; its
input is read from a running ledger under every live consent."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pandas as pd
from nacl.signing import SigningKey

from ledger import signing
from ledger.credit import synthetic
from ledger.credit.rescore import features_from_ledger, local_cluster, rescore, score_table
from ledger.credit.scorecard import Scorecard, labelled
from ledger.ids import new_uuid
from tests.conftest import sqlite_url
from tests.credit.test_consent import DAY, grant, signed
from tests.sdk.test_client_server import OPERATOR, Ledger
from tests.test_cli import ledger_cli
from tests.test_server import serving
from tests.test_wallets import START, World


def test_dask_rescoring_equals_one_process(tmp_path: Path) -> None:
    truth = synthetic.plan(300, 900, 60, 5)
    table = synthetic.features_table(truth, synthetic.sales(truth, 900, 60, 5), 60)
    card = Scorecard.train(labelled(table, "defaulted", "yes"))
    features = table.drop(columns=["defaulted"])
    single = score_table(card, features)
    with local_cluster(2) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        spread = rescore(client, card, features, partition_rows=70)  # 5 partitions
    pd.testing.assert_frame_equal(spread, single, check_exact=True)
    assert (single.top_reason != "").any() and single.score.nunique() > 50

    card.save(tmp_path / "m")
    features.to_csv(tmp_path / "borrowers.csv", index=False)
    run = ledger_cli(
        "credit", "rescore", "--model", str(tmp_path / "m"), "--data",
        str(tmp_path / "borrowers.csv"), "--out", str(tmp_path / "scores.csv"),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    written = pd.read_csv(tmp_path / "scores.csv").fillna("")
    assert len(written) == len(features)
    assert (written.score.round(6) == single.score.round(6).to_numpy()).all()


def test_nightly_rescoring_reads_every_consenting_borrower_from_the_ledger(
    world: World, model_file: Path
) -> None:
    """The nightly job's input comes from the ledger: one row per live consent granted to the
    lender, each read journaled; then Dask scores it exactly as one process would."""
    shops = [world.wallet(1, bank=1, kind="merchant") for _ in range(4)]
    payer = world.wallet(1, bank=100_000)
    world.top_up(payer, 60_000)
    for day in range(1, 6):
        world.at(START + day * DAY)
        for i, shop in enumerate(shops):
            assert world.pay(payer, shop.id, 1_000 * (i + 1))["result"] == "ok"
    world.at(START + 7 * DAY)
    mine = [grant(world, shops[0]).json()["id"], grant(world, shops[1]).json()["id"]]
    assert grant(world, shops[2], lender="op_b").status_code == 201
    revoked = grant(world, shops[3]).json()["id"]
    path = f"/v1/credit/borrowers/{shops[3].id}/consents/{revoked}/revoke"
    assert signed(world, shops[3], "POST", path).status_code == 200

    world.api.headers["Authorization"] = world.op["Authorization"]
    try:
        table = features_from_ledger(world.api, page_limit=1)  # one consent a page
    finally:
        del world.api.headers["Authorization"]
    assert sorted(table.consent) == sorted(mine), "op_a's live consents only"
    by_shop = table.set_index("borrower")
    assert by_shop.loc[shops[0].id, "takings_365d"] == 5_000
    assert by_shop.loc[shops[1].id, "takings_365d"] == 10_000
    for shop, consent in zip(shops[:2], mine, strict=True):
        listed = signed(world, shop, "GET", f"/v1/credit/borrowers/{shop.id}/consents").json()
        reads = {c["id"]: c["reads"] for c in listed["data"]}
        assert reads[consent] == 1, "each read is journaled under its consent"
    everything = world.api.get("/v1/credit/consents?status=all", headers=world.op).json()
    assert len(everything["data"]) == 3 and not everything["has_more"]
    assert (
        world.api.get("/v1/credit/consents", headers=world.op_b).json()["data"][0]["borrower"]
        == shops[2].id
    )

    card = Scorecard.load(model_file)
    features = table.drop(columns=["borrower", "consent"])
    with local_cluster(2) as client:
        spread = rescore(client, card, features)
    pd.testing.assert_frame_equal(spread, score_table(card, features), check_exact=True)


def test_rescore_cli_reads_a_running_ledger(tmp_path: Path, model_file: Path) -> None:
    """``ledger credit rescore --server`` against a real ``ledger serve``, over real HTTP."""
    with serving(sqlite_url(tmp_path), tmp_path) as server:
        ledger = Ledger(server)
        key = SigningKey.generate()
        shop = new_uuid()
        body = {
            "id": shop, "kind": "merchant", "class": 4, "kyc": {"phone": "+8613800000000"},
            "public_key": base64.b64encode(bytes(key.verify_key)).decode(),
        }  # fmt: skip
        ledger.post("/v1/wallets", body, ledger.op_key)
        grant_path = f"/v1/credit/borrowers/{shop}/consents"
        raw = json.dumps(
            {"lender": OPERATOR, "expires_at_ms": int(time.time() * 1000) + 86_400_000}
        )
        ts = int(time.time() * 1000)
        signature = key.sign(signing.read_message("POST", grant_path, ts, raw.encode())).signature
        headers = {"Wallet-Id": shop, "Wallet-Timestamp": str(ts),
                   "Wallet-Signature": base64.b64encode(signature).decode(),
                   "Content-Type": "application/json"}  # fmt: skip
        granted = ledger.http.post(grant_path, content=raw, headers=headers)
        assert granted.status_code == 201, granted.text
        key_file = tmp_path / "op.key"
        key_file.write_text(ledger.op_key)
        args = ("credit", "rescore", "--model", str(model_file), "--server", server.base)
        run = ledger_cli(*args, "--api-key-file", str(key_file), "--out", str(tmp_path / "s.csv"))
        assert run.returncode == 0, run.stderr
        scores = pd.read_csv(tmp_path / "s.csv")
        assert list(scores.borrower) == [shop] and list(scores.consent) == [granted.json()["id"]]
        assert scores.score.notna().all() and 0 < scores.probability_bad[0] < 1
        key_file.write_text("lk_op_wrong")
        refused = ledger_cli(*args, "--api-key-file", str(key_file), "--out", str(tmp_path / "x"))
        assert refused.returncode == 2 and "invalid_api_key" in refused.stderr
        ledger.http.close()
    no_source = ledger_cli("credit", "rescore", "--model", str(model_file), "--out", "x.csv")
    assert no_source.returncode == 2 and "--data FILE, or --server" in no_source.stderr
