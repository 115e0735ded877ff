"""Daily statements through the HTTP API, on SQLite and PostgreSQL: rows and totals of a day with
every kind of money movement, complete days that never change, partial days, the signature, and
`ledger verify --statement` on good, tampered and forged files."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import uuid
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey, VerifyKey
from typer.testing import CliRunner

from ledger import cli
from ledger.wallets.service import system_id
from merchant_api import statements
from tests.merchant.conftest import Pilot, Shop, W

DAY_S = 86_400
CST_S = 8 * 3600


def start_of_next_day(pilot: Pilot, hour: int = 1) -> str:
    """Move the clock to ``hour`` o'clock of the next CST day; return that day (YYYY-MM-DD)."""
    now_s = pilot.now_ms() // 1000
    day = (now_s + CST_S) // DAY_S + 1
    pilot.advance(day * DAY_S - CST_S + hour * 3600 - pilot.now_ms() / 1000)
    return statements.day_date(day).isoformat()


def past_midnight(pilot: Pilot) -> None:
    now_s = pilot.now_ms() // 1000
    pilot.advance(((now_s + CST_S) // DAY_S + 1) * DAY_S - CST_S - now_s + 60)


def fetch(pilot: Pilot, shop: Shop, day: str) -> Any:
    response = pilot.api.get(f"/v1/statements/{day}", headers=shop.test)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    return response


def parse(text: str) -> tuple[dict[str, str], list[dict[str, str]], dict[str, str]]:
    """(header fields, rows, footer fields) of a statement."""
    header: dict[str, str] = {}
    footer: dict[str, str] = {}
    body: list[str] = []
    for line in text.splitlines():
        if line.startswith("# total: "):
            fields = dict(part.split("=") for part in line[len("# total: ") :].split(" "))
            kind = fields.pop("type")
            footer["total_" + kind] = " ".join(f"{k}={v}" for k, v in fields.items())
        elif line.startswith("# ") and not body:
            key, _, value = line[2:].partition(": ")
            header[key] = value
        elif line.startswith("# "):
            key, sep, value = line[2:].partition(": ")
            if not sep:
                key, _, value = line[2:].partition("=")
            footer[key] = value
        else:
            body.append(line)
    rows = list(csv.DictReader(io.StringIO("\n".join(body) + "\n")))
    return header, rows, footer


def paid_order(pilot: Pilot, shop: Shop, payer: W, amount: int, no: str) -> dict[str, Any]:
    order = pilot.order(shop, amount, out_trade_no=no)
    answer = pilot.pay_order(payer, order)
    assert answer.status_code == 200 and answer.json()["result"] == "ok", answer.text
    return order


def busy_day(pilot: Pilot) -> tuple[Shop, W, str, dict[str, Any]]:
    """A day of QR payments, payment-code captures, a plain wallet payment, two refunds and a
    settlement; returns the shop, the shopper, the day and what happened."""
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=100_000)
    day = start_of_next_day(pilot)
    qr1 = paid_order(pilot, shop, shopper, 1_000, "T-1")
    pilot.advance(60)
    qr2 = paid_order(pilot, shop, shopper, 2_500, "T-2")
    code1 = pilot.order(
        shop, 700, out_trade_no="T-3", payment_code=pilot.payment_code(shopper, 700)
    )
    assert code1["status"] == "succeeded", code1
    code2 = pilot.order(shop, 1_200, out_trade_no="T-4")
    captured = pilot.post(
        f"/v1/payment_orders/{code2['id']}/capture_code",
        {"payment_code": pilot.payment_code(shopper, 5_000)},
        shop.test,
    )
    assert captured["result"] == "ok", captured
    assert pilot.transfer(shopper, shop.wallet, 300) == "ok"
    pilot.advance(3600)
    refunds = []
    for order, amount, no in ((qr1, 400, "R-1"), (qr2, 2_500, "R-2")):
        body = {"payment_order": order["id"], "amount": amount, "out_refund_no": no}
        refund = pilot.post("/v1/refunds", body, shop.test, status=201)
        assert refund["status"] == "succeeded", refund
        refunds.append(refund)
    settlement = pilot.post("/v1/settlements", {"amount": 1_000}, shop.test, status=201)
    assert settlement["status"] == "succeeded", settlement
    happened = {"orders": [qr1, qr2, code1, code2], "refunds": refunds, "settlement": settlement}
    return shop, shopper, day, happened


def test_a_days_rows_and_totals_match_what_happened(pilot: Pilot) -> None:
    shop, shopper, day, happened = busy_day(pilot)
    response = fetch(pilot, shop, day)
    header, rows, footer = parse(response.text)
    assert header["merchant"] == shop.id and header["wallet"] == shop.wallet
    assert header["date"] == day and header["complete"] == "false"  # the day is still running
    assert header["origin"] == pilot.ledger.origin
    orders, refunds = happened["orders"], happened["refunds"]
    settlement = happened["settlement"]
    want = [
        ("payment", orders[0]["id"], orders[0]["id"], "T-1", "", shopper.id, "1000"),
        ("payment", orders[1]["id"], orders[1]["id"], "T-2", "", shopper.id, "2500"),
        ("payment", orders[2]["id"], orders[2]["id"], "T-3", "", shopper.id, "700"),
        ("payment", orders[3]["id"], orders[3]["id"], "T-4", "", shopper.id, "1200"),
        ("payment", None, "", "", "", shopper.id, "300"),
        ("refund", refunds[0]["id"], orders[0]["id"], "T-1", "R-1", shopper.id, "-400"),
        ("refund", refunds[1]["id"], orders[1]["id"], "T-2", "R-2", shopper.id, "-2500"),
    ]
    float_account = str(uuid.UUID(int=system_id("op_a/float")))
    want.append(("settlement", settlement["id"], "", "", "", float_account, "-1000"))
    got = [
        (
            r["type"],
            r["transfer_id"],
            r["payment_order"],
            r["out_trade_no"],
            r["out_refund_no"],
            r["counterparty"],
            r["amount_fen"],
        )
        for r in rows
    ]
    assert [g[:1] + g[2:] for g in got] == [w[:1] + w[2:] for w in want]
    assert [g[1] for g in got if g[0] != "payment" or g[2]] == [
        w[1] for w in want if w[1] is not None
    ]
    assert all(r["fee_fen"] == "0" for r in rows)
    seqs = [int(r["seq"]) for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(r["time"].startswith(day + "T") and r["time"].endswith("+08:00") for r in rows)
    assert footer["total_payment"] == "count=5 amount_fen=5700 fee_fen=0"
    assert footer["total_refund"] == "count=2 amount_fen=-2900 fee_fen=0"
    assert footer["total_settlement"] == "count=1 amount_fen=-1000 fee_fen=0"
    assert footer["total_sweep"] == "count=0 amount_fen=0 fee_fen=0"
    assert footer["total_other"] == "count=0 amount_fen=0 fee_fen=0"
    assert (footer["net_fen"], footer["opening_balance_fen"]) == ("1800", "0")
    assert footer["closing_balance_fen"] == str(pilot.balance(shop.wallet)) == "1800"
    # the file's own sha256 and the ledger's signature, also in the headers
    text = response.text
    body = text[: text.index("# sha256=")]
    digest = hashlib.sha256(body.encode()).hexdigest()
    assert footer["sha256"] == digest == response.headers["statement-sha256"]
    assert footer["signature"] == response.headers["statement-signature"]
    key = base64.b64decode(pilot.get("/v1/public_key", {})["public_key"])
    message = statements.signed_message(
        header["origin"], shop.id, day, int(header["tree_size"]), digest
    )
    VerifyKey(key).verify(message, base64.b64decode(footer["signature"]))


def test_a_past_day_is_complete_and_never_changes(pilot: Pilot) -> None:
    shop, shopper, day, _ = busy_day(pilot)
    partial = fetch(pilot, shop, day).text
    past_midnight(pilot)  # nothing has happened since midnight: asking closes the day
    first = fetch(pilot, shop, day)
    header, rows, _ = parse(first.text)
    assert header["complete"] == "true" and len(rows) == 8
    assert parse(partial)[1] == rows  # nothing was on its way
    # more activity, on the next day and the one after, changes nothing about that day
    paid_order(pilot, shop, shopper, 900, "T-next")
    assert pilot.post("/v1/settlements", {}, shop.test, status=201)["amount"] == 2_700
    again = fetch(pilot, shop, day)
    assert again.content == first.content
    assert again.headers["statement-signature"] == first.headers["statement-signature"]
    next_day = statements.day_date(statements.cst_day(pilot.now_ms())).isoformat()
    today = parse(fetch(pilot, shop, next_day).text)
    assert today[0]["complete"] == "false" and today[2]["opening_balance_fen"] == "1800"
    assert [r["type"] for r in today[1]] == ["payment", "settlement"]
    assert today[2]["closing_balance_fen"] == "0"
    past_midnight(pilot)
    paid_order(pilot, shop, shopper, 100, "T-later")
    assert fetch(pilot, shop, day).content == first.content


def test_a_day_without_movements_and_bad_days(pilot: Pilot) -> None:
    shop = pilot.merchant()
    today = statements.day_date(statements.cst_day(pilot.now_ms()))
    header, rows, footer = parse(fetch(pilot, shop, "2020-01-01").text)
    assert header["complete"] == "true" and rows == []
    assert footer["opening_balance_fen"] == footer["closing_balance_fen"] == "0"
    for bad in ("2026-13-01", "20261122", "yesterday", "2026-02-30"):
        response = pilot.api.get(f"/v1/statements/{bad}", headers=shop.test)
        assert response.status_code == 422, bad
        assert response.json()["error"]["code"] == "invalid_date"
    future = statements.day_date(statements.cst_day(pilot.now_ms()) + 1).isoformat()
    response = pilot.api.get(f"/v1/statements/{future}", headers=shop.test)
    assert (response.status_code, response.json()["error"]["code"]) == (422, "date_in_future")
    assert pilot.api.get(f"/v1/statements/{today}").status_code == 401


def test_another_merchant_sees_only_its_own_wallet(pilot: Pilot) -> None:
    shop, _, day, _ = busy_day(pilot)
    other = pilot.merchant("Noodle Bar")
    header, rows, footer = parse(fetch(pilot, other, day).text)
    assert header["merchant"] == other.id and header["wallet"] == other.wallet
    assert rows == [] and footer["closing_balance_fen"] == "0"
    assert shop.wallet not in fetch(pilot, other, day).text


# -- ledger verify --statement ------------------------------------------------------------------


def verify(database_url: str, path: Path, *extra: str) -> Any:
    args = ["verify", "--database", database_url, "--statement", str(path), *extra]
    return CliRunner().invoke(cli.app, args)


def resign(pilot: Pilot, text: str, key: SigningKey | None = None) -> str:
    """The statement's body re-hashed and re-signed (by the ledger's key unless ``key``)."""
    body = text[: text.index("# sha256=")]
    header = parse(text)[0]
    made = statements.sign(
        lambda message: (key or pilot.ledger.key).sign(message).signature,
        header["origin"],
        header["merchant"],
        statements.parse_day(header["date"]),
        int(header["tree_size"]),
        header["complete"] == "true",
        body,
    )
    return made.text


def test_ledger_verify_checks_a_statement_file(
    pilot: Pilot, database_url: str, tmp_path: Path
) -> None:
    shop, _, day, _ = busy_day(pilot)
    past_midnight(pilot)
    good = fetch(pilot, shop, day).text
    path = tmp_path / "statement.csv"
    path.write_bytes(good.encode())
    ok = verify(database_url, path)
    assert ok.exit_code == 0, ok.output
    assert "OK statement of " + shop.id in ok.stdout and "8 rows" in ok.stdout
    whole = CliRunner().invoke(cli.app, ["verify", "--database", database_url])
    assert whole.exit_code == 0, whole.output  # settlements are signed, day-closing records fit
    public_key = pilot.get("/v1/public_key", {})["public_key"]
    assert verify(database_url, path, "--public-key", public_key).exit_code == 0
    today = statements.day_date(statements.cst_day(pilot.now_ms())).isoformat()
    partial = fetch(pilot, shop, today)
    path.write_bytes(partial.content)
    assert verify(database_url, path).exit_code == 0

    def fails(text: str, *extra: str) -> str:
        path.write_bytes(text.encode())
        run = verify(database_url, path, *extra)
        assert run.exit_code == 1, run.output
        assert "FAIL" in run.stderr
        return str(run.stderr)

    lines = good.split("\n")
    refund_at = next(i for i, line in enumerate(lines) if ",refund," in line)
    seq = lines[refund_at].split(",")[0]
    tampered = "\n".join(
        line.replace(",-400,", ",-40,") if i == refund_at else line for i, line in enumerate(lines)
    )
    assert tampered != good
    assert "sha256 line does not match" in fails(tampered)
    rehashed = tampered.replace(
        good.split("# sha256=")[1].split("\n")[0],
        hashlib.sha256(tampered[: tampered.index("# sha256=")].encode()).hexdigest(),
    )
    assert "signature does not verify" in fails(rehashed)
    # signed by the ledger's own key (a buggy or compromised statement maker): the journal says no
    message = fails(resign(pilot, tampered))
    assert f"row for entry {seq} differs" in message and "'-40'" in message
    removed = "\n".join(line for i, line in enumerate(lines) if i != refund_at)
    assert f"lacks the journal's row for entry {seq}" in fails(resign(pilot, removed))
    balance = good.replace("# closing_balance_fen: 1800", "# closing_balance_fen: 18000")
    assert "closing_balance_fen" in fails(resign(pilot, balance))
    forged = resign(pilot, good, SigningKey.generate())
    assert "signature does not verify" in fails(forged)
    other_key = base64.b64encode(bytes(SigningKey.generate().verify_key)).decode()
    assert "not this ledger's key" in fails(good, "--public-key", other_key)
    claimed = partial.text.replace("# complete: false", "# complete: true")
    assert "is pinned to tree size" in fails(resign(pilot, claimed))
    assert "not a statement" in fails("hello\n")
