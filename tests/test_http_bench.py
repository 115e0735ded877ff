"""``loadtests.http_bench`` without wrk: the pieces a run is made of, against real servers.

A real ``ledger serve`` on SQLite is seeded over HTTP by the module's own functions; pre-signed
single payments and batches (exactly what the wrk script sends) are POSTed with httpx, and each
must be accepted once (``ok``, not replayed), the answer must read the way the Lua script counts
it, and the ledger's tree must grow by exactly the number of payments. The trivial app answers a
payment with 200 and refuses a float amount with 422. The parser of wrk's output and the report
are tested on fixed input.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import get_type_hints

import httpx
import pytest

from ledger.api.models import SignedPaymentIn
from ledger.crash import ServeProcess, serving
from loadtests import http_bench as hb
from loadtests import trivial_app

WRK_STDOUT = """Running 10s test @ http://127.0.0.1:8001/v1/payments
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.71ms    1.02ms  24.10ms   90.12%
    Req/Sec     4.32k   310.55     5.01k    71.00%
  86012 requests in 10.00s, 14.11MB read
Requests/sec:   8598.95
Transfer/sec:      1.41MB
HTTP_BENCH_JSON {"requests":86012,"duration_us":10002503,"bytes":14795264,\
"latency_us":{"p50":3550,"p90":4700,"p99":8120,"max":24100,"mean":3712.4},\
"errors":{"connect":0,"read":0,"write":0,"status":3,"timeout":1},"ok":86009,"replayed":0,\
"refused":0,"non200":3,"exhausted_threads":0,"sent":86044,"threads":2}
"""


def test_parse_wrk_output() -> None:
    result = hb.parse_wrk_output(WRK_STDOUT)
    assert result.requests == 86012
    assert result.duration_s == pytest.approx(10.002503)
    assert result.requests_per_s == pytest.approx(86012 / 10.002503)
    assert (result.p50_ms, result.p90_ms, result.p99_ms) == (3.55, 4.7, 8.12)
    assert result.max_ms == 24.1 and result.mean_ms == pytest.approx(3.7124)
    assert (result.ok, result.replayed, result.refused, result.non200) == (86009, 0, 0, 3)
    assert result.exhausted_threads == 0 and result.sent == 86044
    assert result.errors["status"] == 3
    assert result.socket_errors == 1  # the timeout; non-2xx answers are not socket errors


def test_parse_wrk_output_without_the_json_line() -> None:
    with pytest.raises(hb.BenchError, match="HTTP_BENCH_JSON"):
        hb.parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_the_lua_script_counts_what_the_module_expects() -> None:
    lua = hb.LUA_SCRIPT.read_text()
    assert hb.OK_MARK in lua
    assert hb.WRK_MARK.strip() in lua


def _measurement(
    target: str,
    kind: hb.Kind,
    rps: float,
    ok: int,
    *,
    committed: int | None = None,
    batch_size: int = 1,
    p99_ms: float = 10.0,
    run: int = 0,
    connections: int = 32,
) -> hb.Measurement:
    wrk = hb.WrkResult(
        requests=int(rps * 10), duration_s=10.0, p50_ms=2.0, p90_ms=3.0, p99_ms=p99_ms,
        max_ms=20.0, mean_ms=2.5, ok=ok, replayed=0, refused=0, non200=0, exhausted_threads=0,
        sent=int(rps * 10),
    )  # fmt: skip
    database = None if kind == "trivial" else "sqlite"
    if committed is None and kind != "trivial":
        committed = ok
    return hb.Measurement(target, kind, database, batch_size, connections, ok, wrk, committed, run)


def test_summarise_medians_ratio_and_goals() -> None:
    runs = [
        _measurement("trivial", "trivial", 8000, 80000, run=0),
        _measurement("trivial", "trivial", 9000, 90000, run=1),
        _measurement("trivial", "trivial", 10000, 100000, run=2),
        _measurement("trivial, 2 workers", "trivial", 12500, 125000, run=0),
        _measurement("trivial, plain route", "trivial", 10000, 100000, run=0),
        # the accepted count is capped by the tree's growth: 60,000 ok but 50,000 committed
        _measurement("sqlite single", "single", 6000, 60000, committed=50000, run=0),
        _measurement("sqlite batch 100", "batch", 250, 250000, batch_size=100, p99_ms=300.0),
    ]
    rows = {r["target"]: r for r in hb.summarise(runs, serve_workers=2)["targets"]}
    trivial = rows["trivial"]
    assert trivial["requests_per_s"] == 9000 and trivial["runs"] == 3
    assert trivial["ratio_to_trivial"] == 1.0 and trivial["meets_goal"] is None
    single = rows["sqlite single"]
    assert single["accepted"] == 50000 and single["payments_per_s"] == 5000
    # each run is divided by the trivial endpoint's figure of the same run (8,000 in run 0),
    # not by the median over runs (9,000)
    assert single["ratio_to_trivial"] == pytest.approx(5000 / 8000, abs=1e-3)
    assert single["ratio_same_workers"] == pytest.approx(5000 / 12500, abs=1e-3)
    assert single["ratio_plain_route"] == pytest.approx(5000 / 10000, abs=1e-3)
    assert rows["trivial, 2 workers"]["ratio_to_trivial"] == pytest.approx(12500 / 8000, abs=1e-3)
    assert single["meets_goal"] is True  # 0.625 >= 0.6 and p99 10 ms <= 50 ms
    batch = rows["sqlite batch 100"]
    assert batch["payments_per_s"] == 25000 and batch["meets_goal"] is True
    table = hb.format_table(hb.summarise(runs, serve_workers=2))
    assert "sqlite batch 100" in table and " met" in table and "plain" in table


def test_ratios_are_the_median_of_each_runs_own_ratio() -> None:
    runs = [
        _measurement("trivial", "trivial", 10000, 100000, run=0),
        _measurement("sqlite single", "single", 5000, 50000, run=0),  # 0.50
        _measurement("trivial", "trivial", 6000, 60000, run=1),
        _measurement("sqlite single", "single", 4800, 48000, run=1),  # 0.80
        _measurement("trivial", "trivial", 8000, 80000, run=2),
        _measurement("sqlite single", "single", 4400, 44000, run=2, p99_ms=60.0),  # 0.55
    ]
    single = {r["target"]: r for r in hb.summarise(runs)["targets"]}["sqlite single"]
    # the median of 0.50, 0.80 and 0.55; the ratio of the medians would be 4,800 / 8,000 = 0.6
    assert single["ratio_to_trivial"] == pytest.approx(0.55, abs=1e-3)
    assert single["payments_per_s"] == 4800 and single["p99_ms"] == 10.0  # medians per figure
    assert single["meets_goal"] is False


def test_each_load_is_its_own_row_held_to_the_runs_best_trivial_rate() -> None:
    runs = [
        _measurement("trivial", "trivial", 10000, 100000, connections=64),
        _measurement("trivial", "trivial", 9000, 90000, connections=128),
        # 64 connections: a short p99 but too few payments; 128: enough, but too slow
        _measurement("sqlite single", "single", 5500, 55000, p99_ms=35.0, connections=64),
        _measurement("sqlite single", "single", 6300, 63000, p99_ms=70.0, connections=128),
    ]
    rows = {(r["target"], r["connections"]): r for r in hb.summarise(runs)["targets"]}
    assert len(rows) == 4
    # both divided by the run's best trivial rate (10,000, at 64), not each by its own load's
    assert rows["trivial", 128]["ratio_to_trivial"] == pytest.approx(0.9, abs=1e-3)
    at_64, at_128 = rows["sqlite single", 64], rows["sqlite single", 128]
    assert at_64["ratio_to_trivial"] == pytest.approx(0.55, abs=1e-3)
    assert at_128["ratio_to_trivial"] == pytest.approx(0.63, abs=1e-3)
    assert at_64["meets_goal"] is False and at_128["meets_goal"] is False
    at_128_fast = _measurement("sqlite single", "single", 6300, 63000, p99_ms=45.0, connections=128)
    rows = {
        (r["target"], r["connections"]): r
        for r in hb.summarise([*runs[:3], at_128_fast])["targets"]
    }
    assert rows["sqlite single", 128]["meets_goal"] is True


def test_connection_counts_are_read_as_a_list() -> None:
    assert hb._counts("64,128,64") == (64, 128)
    with pytest.raises(argparse.ArgumentTypeError, match="whole numbers"):
        hb._counts("64,lots")
    with pytest.raises(SystemExit):
        hb.main(["--connections", "0,64"])
    with pytest.raises(SystemExit):
        hb.main(["--batch-duration", "0"])


def test_bodies_are_dealt_round_robin_one_file_per_thread(tmp_path: Path) -> None:
    hb.write_bodies(tmp_path / "b", ["a", "b", "c", "d", "e"], threads=2)
    assert (tmp_path / "b.0").read_text() == "a\nc\ne\n"
    assert (tmp_path / "b.1").read_text() == "b\nd\n"
    batches = hb.batch_bodies(['{"x":1}', '{"x":2}', '{"x":3}'], 2)
    assert [json.loads(b) for b in batches] == [
        {"payments": [{"x": 1}, {"x": 2}]},
        {"payments": [{"x": 3}]},
    ]


def test_the_trivial_app_parses_what_the_ledger_parses(tmp_path: Path) -> None:
    assert get_type_hints(trivial_app.create_payment)["body"] is SignedPaymentIn
    plain = [r for r in trivial_app.plain_app.routes if getattr(r, "path", "") == trivial_app.PATH]
    assert [r.app.endpoint for r in plain] == [trivial_app.create_payment_plain]
    seeded = hb.Seeded([("0190f0a2-7c1e-7b3a-9d2e-000000000001", "11" * 32)],
                       ["0190f0a2-7c1e-7b3a-9d2e-000000000002"])  # fmt: skip
    body = json.loads(hb.sign_payments(seeded, 1)[0])
    SignedPaymentIn.model_validate(body)  # the ledger's own model takes it
    for workers, plain in ((1, False), (2, False), (1, True)):
        with hb.trivial_server(tmp_path, workers, plain) as base:
            answer = httpx.post(f"{base}/v1/payments", json=body, timeout=10)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"id": body["id"], "result": "ok", "replayed": False}
            refused = httpx.post(f"{base}/v1/payments", json={**body, "amount": 1.0}, timeout=10)
            assert refused.status_code == 422


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServeProcess, hb.Seeded]]:
    with serving(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path) as server:
        yield (
            server,
            hb.seed_ledger(server.base, server.admin_file.read_text().strip(), payers=4, payees=2),
        )


def test_presigned_payments_are_each_accepted_once(
    served: tuple[ServeProcess, hb.Seeded],
) -> None:
    server, seeded = served
    singles = hb.sign_payments(seeded, 50)
    batches = hb.batch_bodies(hb.sign_payments(seeded, 200), 100)
    ids = {json.loads(p)["id"] for p in singles} | {
        p["id"] for b in batches for p in json.loads(b)["payments"]
    }
    assert len(ids) == 250  # every payment distinct
    before = hb.settled_tree_size(server.base)
    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=server.base, headers=headers, timeout=30) as http:
        for body in singles:
            answer = http.post("/v1/payments", content=body)
            assert answer.status_code == 200, answer.text
            assert hb.OK_MARK in answer.text  # what the Lua script counts
            item = answer.json()
            assert (item["result"], item["replayed"]) == ("ok", False)
            assert item["receipt"]["leaf_index"] == item["seq"]
        for body in batches:
            answer = http.post("/v1/payments/batch", content=body)
            assert answer.status_code == 200, answer.text
            assert answer.text.count(hb.OK_MARK) == 100
            results = answer.json()["results"]
            assert [(r["result"], r["replayed"]) for r in results] == [("ok", False)] * 100
        assert hb.settled_tree_size(server.base) - before == 250

        # a payment sent twice is a replay: answered, not counted, not journaled again
        again = http.post("/v1/payments", content=singles[0])
        assert again.status_code == 200 and hb.OK_MARK not in again.text
        assert again.json()["replayed"] is True
    assert hb.tree_size(server.base) - before == 250


def test_ledger_rows_are_read_against_each_runs_verification_ceiling() -> None:
    runs = [
        _measurement("trivial", "trivial", 8000, 80000, run=0),
        _measurement("sqlite batch 100", "batch", 200, 200000, batch_size=100, run=0),
        _measurement("trivial", "trivial", 8000, 80000, run=1),
        _measurement("sqlite batch 100", "batch", 150, 150000, batch_size=100, run=1),
        _measurement("trivial", "trivial", 8000, 80000, run=2),
        _measurement("sqlite batch 100", "batch", 120, 120000, batch_size=100, run=2),
    ]
    # run 0: 20,000/s against 2 × 25,000; run 1: 15,000 against 2 × 10,000; run 2: 12,000
    # against 2 × 20,000: shares 0.40, 0.75 and 0.30, median 0.40 (the median of the rates
    # over the median ceiling would be 15,000 / 40,000 = 0.375)
    summary = hb.summarise(runs, 1, {0: 25_000.0, 1: 10_000.0, 2: 20_000.0}, cores=2)
    rows = {r["target"]: r for r in summary["targets"]}
    assert rows["sqlite batch 100"]["share_of_verify_ceiling"] == pytest.approx(0.40, abs=1e-3)
    assert rows["trivial"]["share_of_verify_ceiling"] is None
    assert summary["ed25519"]["verify_us"] == 50.0  # the median rate, 20,000/s on one core
    assert summary["ed25519"]["verify_ceiling_per_s"] == 40_000
    assert "verify" in hb.format_table(summary)
    # without the machine's figure, no share and no block
    plain = hb.summarise(runs, 1)
    assert "ed25519" not in plain
    assert all(r["share_of_verify_ceiling"] is None for r in plain["targets"])


def test_verify_rate_times_the_servers_own_check() -> None:
    rate = hb.verify_rate(samples=50)
    # a real verification: far fewer than a million a second on one core, and some at all
    assert 100 < rate < 1_000_000
