"""End-to-end HTTP benchmark (issue #5): the framework's ceiling against signed payments.

One run measures, with ``wrk`` as the load generator (pre-made request bodies, a LuaJIT script
in ``loadtests/wrk/payments.lua``, so the generator does no signing and no JSON work while it
runs):

1. **trivial**: ``loadtests.trivial_app``, a FastAPI endpoint that parses a payment-sized body
   into the ledger's own ``SignedPaymentIn`` model and answers a small JSON object (no signature
   check, no journal, no database): the ceiling of FastAPI + uvicorn on this machine. The same
   body is sent again and again.
2. **single**: a real ``ledger serve`` on a fresh database, ``POST /v1/payments``, one signed
   payment per request: the payer's Ed25519 signature is checked, the payment goes through the
   sequencer and the engine, is journaled (canonical entry, Merkle tree, signed checkpoint) and
   committed before the answer, which carries the payment's receipt (inclusion proof).
3. **batch**: the same server, ``POST /v1/payments/batch`` with 100 and 1,000 signed payments
   per request, on 8 connections for 20 s (``--batch-connections``, ``--batch-duration``): a
   few batches in flight fill the sequencer's batches (see ``BATCH_CONNECTIONS`` for why 8, and
   ``BATCH_DURATION_S`` for why longer than the other runs).

1 and 2 are measured at each load in ``--connections`` (default 64 and 128): the target is a
throughput ratio with a p99 bound *at that load*, and the load moves the two in opposite ways
(more connections fill the writer's batches better, and queue longer). A run's ceiling is the
trivial endpoint's best rate over those loads.

2 and 3 run on SQLite and then on PostgreSQL (a fresh database on the ``--postgres`` server,
dropped at the end; ``--postgres ''`` skips it).

**What counts.** Every signed payment is made (and signed) before its wrk run, each with its own
id, and sent exactly once: a replayed payment would be answered from memory, cheaply, and would
inflate the figure. The script counts per answer (per item for batches) ``ok`` (accepted, not a
replay), ``replayed`` and ``refused``, and the non-200 answers. After the run the ledger's
signed checkpoint (``GET /v1/checkpoints/latest``) gives how many entries were committed. The
published figure, **accepted payments/s**, is ``min(ok answers, committed entries) / duration``:
wrk stops at the deadline with requests in flight, which the server still commits after it, so
the committed count alone would flatter the figure by up to one batch per connection; the
answers alone would trust the script's text matching. ``requests/s`` is wrk's completed
requests over the same duration; p50 and p99 are wrk's per-request latencies (for batches, of
the whole request).

**Server set-up.** The ledger runs as ``ledger serve`` runs it: the writer process and
``--serve-workers`` HTTP worker processes (default: as many as ``ledger serve`` starts here,
one per core), uvicorn with ``loop`` and ``http`` on ``auto`` (uvloop and httptools). The
trivial app is measured three ways: as one uvicorn process (the framework's ceiling per
process, the figure the issue quotes); with as many uvicorn workers as the ledger has HTTP
workers (the ceiling of the same number of processes); and as one process answering from a
plain route (``ledger.api.plain``), as the ledger serves ``POST /v1/payments``, which skips
FastAPI's request handling. Each ratio is reported; ``ratio`` is to the first,
``ratio_same_workers`` to the second, ``ratio_plain_route`` to the third.

**The machine.** wrk (2 threads) runs on the same 2 cores as the server (and, for the ledger,
its committer process and the database): the figures include the generator's share of the
CPU. Other work on the machine at the same time makes them noisy; ``--runs N`` reports medians.
Every server is started before the first measurement, and each run measures them all in turn
(the trivial endpoint, single payments on each database, then the batches), so that a ratio
divides two figures taken seconds apart: ``ratio`` is the median over runs of each run's own
ratio. Machines of the same kind differ too (one gave 38 µs for an Ed25519 verification,
another 96), so each run also measures this machine's verification speed (``verify_rate``) and
each ledger row reports its payments/s as a share of what every core could verify doing
nothing else (``share_of_verify_ceiling``; the report's ``ed25519`` block): the issue's batch
targets are absolute, and on a machine whose ceiling is near them no server can meet them.

Run::

    python -m loadtests.http_bench [--json] [--duration S] [--connections N[,N...]]
        [--batch-duration S] [--batch-connections N] [--postgres URL|''] [--runs N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import httpx

from ledger.crash import ServeProcess, free_port, serving
from ledger.server import WORKERS_DEFAULT

DEFAULT_POSTGRES: Final = os.environ.get(
    "LEDGER_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
LUA_SCRIPT: Final = Path(__file__).resolve().parent / "wrk" / "payments.lua"
WRK_MARK: Final = "HTTP_BENCH_JSON "
OK_MARK: Final = '"result":"ok","replayed":false'
"""How an accepted, first-time payment reads in the server's answer (the Lua script counts it)."""
WRK_THREADS: Final = 2
WRK_TIMEOUT: Final = "30s"
"""wrk's per-request timeout: long enough that a slow batch is measured, not dropped."""
CONNECTIONS: Final = (64, 128)
"""Loads (wrk connections) at which the trivial endpoint and single payments are measured:
the target is a ratio *with* a p99 bound at that load, and more connections give the writer
fuller batches (a higher ratio) but longer queues (a higher p99)."""
BATCH_CONNECTIONS: Final = 8
"""Batches fill the sequencer's batch on few connections, but each connection stays with the
HTTP worker that accepted it, and with 4 all of them sometimes land on one worker, whose
event loop then leaves a core partly idle (2026-12-06, SQLite, batches of 1,000, alternating
runs: 4 connections gave 21,875, 21,625 and 18,875 payments/s, the last with every connection
on one worker and the machine 84 % busy; 8 gave 22,250, 22,625 and 22,250, 98-99 % busy).
More connections add only queueing (p50 grows with them)."""
BATCH_SIZES: Final = (100, 1000)
DURATION_S: Final = 10
BATCH_DURATION_S: Final = 20
"""Seconds per batch run. wrk counts only the answers that come back within the run, and a
batch of 1,000 takes 0.4 s to answer at 8 connections: the first answers come that late and
the last 8 batches are cut off, which costs an 8 s run 5 % of its payments/s (measured:
ok 161,000 against 169,000 committed) and a 20 s run 2 %."""
PAYERS: Final = 64
PAYEES: Final = 16
PAYMENT_FEN: Final = 1
FUND_FEN: Final = 10_000_000
"""Each payer wallet starts with ¥100,000.00: millions of 1-fen payments."""
SIGN_MARGIN: Final = 1.5
"""Bodies signed per run: the expected rate × duration × this margin."""
BATCH_RATE_GUESS: Final = 30_000.0
"""Payments/s assumed for the first batch run (1.5 × the SQLite target; × ``SIGN_MARGIN``)."""
EXPIRES_IN_MS: Final = 3_600_000
SERVE_TIMEOUT_S: Final = 90.0
SETTLE_S: Final = 0.5
"""The tree is taken as settled when its size has not changed for this long."""
INLINE_SIGN_MAX: Final = 4_000
"""Fewer payments than this are signed in this process; more, in a pool of two."""
VERIFY_SAMPLES: Final = 2_000
"""Verifications per try when a run measures this machine's Ed25519 speed (three tries)."""

TARGET_SINGLE_RATIO: Final = 0.6
TARGET_P99_MS: Final = 50.0
TARGET_BATCH_TPS: Final = {"sqlite": 20_000.0, "postgres": 12_000.0}

Kind = Literal["trivial", "single", "batch"]


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and why."""


# --- wrk --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    """What the Lua ``done()`` printed: counts over all threads, latencies in milliseconds."""

    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    ok: int
    replayed: int
    refused: int
    non200: int
    exhausted_threads: int
    sent: int
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def socket_errors(self) -> int:
        return sum(v for k, v in self.errors.items() if k != "status")


def parse_wrk_output(stdout: str) -> WrkResult:
    """The ``HTTP_BENCH_JSON {...}`` line of a wrk run with ``payments.lua``."""
    for line in stdout.splitlines():
        if line.startswith(WRK_MARK):
            data = json.loads(line[len(WRK_MARK) :])
            break
    else:
        raise BenchError(f"wrk printed no {WRK_MARK.strip()} line:\n{stdout[-2000:]}")
    lat = data["latency_us"]
    return WrkResult(
        requests=int(data["requests"]),
        duration_s=data["duration_us"] / 1e6,
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        max_ms=lat["max"] / 1000,
        mean_ms=lat["mean"] / 1000,
        ok=int(data["ok"]),
        replayed=int(data["replayed"]),
        refused=int(data["refused"]),
        non200=int(data["non200"]),
        exhausted_threads=int(data["exhausted_threads"]),
        sent=int(data["sent"]),
        errors={k: int(v) for k, v in data["errors"].items()},
    )


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise BenchError("wrk is not installed (Debian: apt-get install wrk)")
    return found


def write_bodies(prefix: Path, bodies: Sequence[str], threads: int = WRK_THREADS) -> None:
    """One file per wrk thread (``prefix.0``, ``prefix.1``...), bodies dealt round-robin so the
    threads send them in about the order they were made (time-ordered ids)."""
    for t in range(threads):
        with open(f"{prefix}.{t}", "w") as f:
            for body in bodies[t::threads]:
                f.write(body)
                f.write("\n")


def run_wrk(
    url: str,
    prefix: Path,
    mode: Kind,
    connections: int,
    duration_s: int,
    threads: int = WRK_THREADS,
) -> WrkResult:
    """Run wrk against ``url`` with the bodies at ``prefix`` and return what it measured."""
    command = [
        wrk_path(), "-t", str(threads), "-c", str(max(connections, threads)),
        "-d", f"{duration_s}s", "--timeout", WRK_TIMEOUT, "-s", str(LUA_SCRIPT),
        url, "--", str(prefix), mode,
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + 120, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"wrk exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return parse_wrk_output(done.stdout)


# --- processes --------------------------------------------------------------------------------


def _wait_healthy(proc: subprocess.Popen[bytes], base: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{base}: the server exited ({proc.returncode}):\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    _stop(proc)
    raise BenchError(f"{base}: no answer in {timeout_s:.0f} s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM (uvicorn shuts down, the ledger's committer finishes and exits), then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def trivial_server(workdir: Path, workers: int = 1, plain: bool = False) -> Iterator[str]:
    """``loadtests.trivial_app`` under uvicorn (``workers`` processes; ``plain``: its plain
    route) on a free port; yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = workdir / f"trivial-{workers}{'-plain' if plain else ''}.log"
    command = [sys.executable, "-m", "loadtests.trivial_app", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "--workers", str(workers), *(["--plain"] if plain else [])],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_healthy(proc, base, log, SERVE_TIMEOUT_S)
        yield base
    finally:
        _stop(proc)


@contextlib.contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A fresh database ``bench_http_<random>`` on ``server_url``, dropped afterwards."""
    from ledger.store.database import fresh_postgres_database

    with fresh_postgres_database(server_url, "bench_http") as url:
        yield url


# --- seeding, over HTTP -----------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    """Class-1 payer wallets (id, Ed25519 seed as hex), funded; class-1 payee wallets."""

    payers: list[tuple[str, str]]
    payees: list[str]


def _call(http: httpx.Client, path: str, body: dict[str, Any], key: str) -> dict[str, Any]:
    response = http.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
    if response.status_code not in (200, 201):
        raise BenchError(f"POST {path}: {response.status_code} {response.text[:500]}")
    answer: dict[str, Any] = response.json()
    refused = [r for r in answer.get("results", []) if r.get("result") != "ok"]
    if refused:
        raise BenchError(f"POST {path}: {len(refused)} refused, e.g. {refused[0]}")
    return answer


def seed_ledger(
    base: str,
    cb_key: str,
    payers: int = PAYERS,
    payees: int = PAYEES,
    fund_fen: int = FUND_FEN,
) -> Seeded:
    """Everything the payments need, made over HTTP as a pilot's set-up would be: an operator
    (its API key, authorisation, reserves, e-CNY issued to it), a bank account with a deposit,
    ``payers`` class-1 wallets (no limits) topped up with ``fund_fen`` each, and ``payees``
    class-1 wallets (no balance cap to refuse incoming payments)."""
    from nacl.signing import SigningKey

    operator = f"bench_{uuid.uuid4().hex[:8]}"
    total = payers * fund_fen
    with httpx.Client(base_url=base, timeout=60) as http:
        op_key = str(_call(http, "/v1/api_keys", {"operator": operator}, cb_key)["key"])
        _call(http, "/v1/operators", {"operator": operator}, cb_key)
        money = {"id": str(uuid.uuid4()), "amount": total}
        _call(http, f"/v1/operators/{operator}/reserve_deposits", money, cb_key)
        issue = {"id": str(uuid.uuid4()), "operator": operator, "amount": total}
        _call(http, "/v1/issuances", issue, cb_key)
        bank = str(uuid.uuid4())
        _call(http, "/v1/bank_accounts", {"id": bank, "owner": "http bench"}, op_key)
        deposit = {"id": str(uuid.uuid4()), "amount": total}
        _call(http, f"/v1/bank_accounts/{bank}/deposits", deposit, op_key)

        keys = [SigningKey.generate() for _ in range(payers + payees)]
        ids = [str(uuid.uuid4()) for _ in keys]
        wallets = [
            {
                "id": wallet_id, "class": 1, "public_key": _b64(bytes(key.verify_key)),
                "kyc": {"name": f"Bench {i}", "id_number": f"3101{i:08d}",
                        "phone": f"+86137{i:08d}"},
                "linked_bank_account": bank,
            }
            for i, (wallet_id, key) in enumerate(zip(ids, keys, strict=True))
        ]  # fmt: skip
        for start in range(0, len(wallets), 1000):
            _call(http, "/v1/wallets/batch", {"wallets": wallets[start : start + 1000]}, op_key)
        for wallet_id in ids[:payers]:
            top_up = {"id": str(uuid.uuid4()), "amount": fund_fen}
            _call(http, f"/v1/wallets/{wallet_id}/top_ups", top_up, op_key)
    return Seeded(
        payers=[(w, bytes(k).hex()) for w, k in zip(ids[:payers], keys[:payers], strict=True)],
        payees=ids[payers:],
    )


def _b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode()


# --- signing, ahead of the run ----------------------------------------------------------------


def _sign_range(
    job: tuple[list[tuple[str, str]], list[str], int, int, int, int],
) -> list[str]:
    """Payments ``start .. start + count`` as JSON bodies of ``POST /v1/payments`` (payer
    ``i mod payers``, payee ``(i div payers) mod payees``), each with a fresh UUIDv7 id."""
    from nacl.signing import SigningKey

    from ledger import signing
    from ledger.ids import new_id

    payers, payees, start, count, amount, expires_at_ms = job
    keys = [SigningKey(bytes.fromhex(seed)) for _, seed in payers]
    payer_ints = [uuid.UUID(w).int for w, _ in payers]
    payee_ints = [uuid.UUID(w).int for w in payees]
    out = []
    for i in range(start, start + count):
        p = i % len(payers)
        q = (i // len(payers)) % len(payees)
        tid = new_id()
        auth = signing.sign_payment(
            keys[p], 1, tid, payer_ints[p], payee_ints[q], amount, "CNY", expires_at_ms
        )
        out.append(
            f'{{"id":"{uuid.UUID(int=tid)}","payer":"{payers[p][0]}","payee":"{payees[q]}",'
            f'"amount":{amount},"currency":"CNY","expires_at_ms":{expires_at_ms},'
            f'"key_version":1,"signature":"{_b64(auth.signature)}","kind":"payment"}}'
        )
    return out


def sign_payments(
    seeded: Seeded,
    count: int,
    *,
    amount: int = PAYMENT_FEN,
    expires_in_ms: int = EXPIRES_IN_MS,
    workers: int = 2,
) -> list[str]:
    """``count`` distinct signed payments, each the JSON body of one ``POST /v1/payments``.

    Signing takes ~25 µs a payment here, so large counts are split over ``workers`` processes
    (the server is idle meanwhile: nothing is measured while signing)."""
    expires = time.time_ns() // 1_000_000 + expires_in_ms
    if count <= INLINE_SIGN_MAX or workers <= 1:
        return _sign_range((seeded.payers, seeded.payees, 0, count, amount, expires))
    parts = workers * 4
    step = math.ceil(count / parts)
    jobs = [
        (seeded.payers, seeded.payees, s, min(step, count - s), amount, expires)
        for s in range(0, count, step)
    ]
    with ProcessPoolExecutor(workers) as pool:
        return [body for part in pool.map(_sign_range, jobs) for body in part]


def batch_bodies(payments: Sequence[str], size: int) -> list[str]:
    """``{"payments": [...]}`` bodies of ``size`` payments each (the last may be shorter)."""
    return [
        '{"payments":[' + ",".join(payments[s : s + size]) + "]}"
        for s in range(0, len(payments), size)
    ]


def tree_size(base: str) -> int:
    """The size of the ledger's latest signed checkpoint (``GET /v1/checkpoints/latest``)."""
    response = httpx.get(f"{base}/v1/checkpoints/latest", timeout=30)
    response.raise_for_status()
    return int(response.json()["tree_size"])


def settled_tree_size(base: str, timeout_s: float = 60.0) -> int:
    """The tree size once it has stopped growing (the requests wrk left in flight committed)."""
    deadline = time.monotonic() + timeout_s
    size, since = tree_size(base), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = tree_size(base)
        if now != size:
            size, since = now, time.monotonic()
        elif time.monotonic() - since >= SETTLE_S:
            break
    return size


def verify_rate(samples: int = VERIFY_SAMPLES) -> float:
    """Signed payments verified a second on one core here, as the ledger's HTTP workers verify
    them (``ledger.signing.verify_payment_signature``: build the canonical message, check the
    Ed25519 signature): the best of three tries, taken while the servers are idle.

    Every server that checks each signature pays this, so it sets how fast a machine can be at
    all: with it, a batch figure can be read against the machine it was measured on (the
    ``verify`` share in the report) and not only against the issue's absolute targets."""
    from nacl.signing import SigningKey

    from ledger import signing
    from ledger.ids import new_id

    key = SigningKey.generate()
    tid, payer, payee = new_id(), uuid.uuid4().int, uuid.uuid4().int
    expires = time.time_ns() // 1_000_000 + EXPIRES_IN_MS
    signature = signing.sign_payment(
        key, 1, tid, payer, payee, PAYMENT_FEN, "CNY", expires
    ).signature
    public = bytes(key.verify_key)
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(samples):
            signing.verify_payment_signature(
                public, signature, tid, payer, payee, PAYMENT_FEN, "CNY", expires
            )
        best = min(best, time.perf_counter() - started)
    return samples / best


# --- measurements -----------------------------------------------------------------------------


@dataclass
class Measurement:
    """One wrk run against one target."""

    target: str
    kind: Kind
    database: str | None
    batch_size: int
    connections: int
    bodies: int
    wrk: WrkResult
    committed: int | None = None
    """Entries the ledger's tree grew by over the run (None for the trivial endpoint)."""
    run: int = 0
    """Which round of ``--runs`` it belongs to: ratios pair it with the trivial endpoint's
    measurement of the same round, made a few seconds before it."""

    @property
    def accepted(self) -> int:
        """Payments accepted: ok answers, capped by what the tree grew by (see module doc)."""
        if self.committed is None:
            return self.wrk.ok
        return min(self.wrk.ok, self.committed)

    @property
    def payments_per_s(self) -> float:
        return self.accepted / self.wrk.duration_s if self.wrk.duration_s > 0 else 0.0

    def row(self) -> dict[str, Any]:
        w = self.wrk
        return {
            "target": self.target, "kind": self.kind, "database": self.database,
            "batch_size": self.batch_size, "connections": self.connections,
            "duration_s": round(w.duration_s, 3), "requests": w.requests,
            "requests_per_s": round(w.requests_per_s, 1), "p50_ms": round(w.p50_ms, 2),
            "p90_ms": round(w.p90_ms, 2), "p99_ms": round(w.p99_ms, 2),
            "max_ms": round(w.max_ms, 2), "ok": w.ok, "replayed": w.replayed,
            "refused": w.refused, "non200": w.non200, "socket_errors": w.socket_errors,
            "exhausted_threads": w.exhausted_threads, "bodies_signed": self.bodies,
            "committed": self.committed, "accepted": self.accepted,
            "payments_per_s": round(self.payments_per_s, 1) if self.kind != "trivial" else None,
            "run": self.run,
        }  # fmt: skip


Say = Callable[[str], None]


def _trivial_bodies(workdir: Path) -> Path:
    """One signed payment, sent again and again to the trivial endpoint (it keeps nothing)."""
    from nacl.signing import SigningKey

    key = SigningKey.generate()
    one = Seeded([(str(uuid.uuid4()), bytes(key).hex())], [str(uuid.uuid4())])
    prefix = workdir / "trivial.bodies"
    expires = time.time_ns() // 1_000_000 + EXPIRES_IN_MS
    body = _sign_range((one.payers, one.payees, 0, 1, PAYMENT_FEN, expires))
    write_bodies(prefix, body * WRK_THREADS)
    return prefix


def _measure_trivial(
    base: str, prefix: Path, target: str, connections: int, duration_s: int, run: int, say: Say
) -> Measurement:
    say(f"{target}: run {run + 1}, {connections} connections, {duration_s} s")
    result = run_wrk(f"{base}/v1/payments", prefix, "trivial", connections, duration_s)
    say(f"  {result.requests_per_s:,.0f} req/s, p99 {result.p99_ms:.1f} ms")
    return Measurement(target, "trivial", None, 1, connections, 1, result, None, run)


def trivial_target(workers: int, plain: bool = False) -> str:
    if plain:
        return "trivial, plain route"
    return "trivial" if workers == 1 else f"trivial, {workers} workers"


def _measure_payments(
    server: ServeProcess,
    seeded: Seeded,
    database: str,
    batch_size: int,
    connections: int,
    duration_s: int,
    expected_per_s: float,
    say: Say,
    run: int = 0,
) -> Measurement:
    """Sign enough payments for ``duration_s`` at ``expected_per_s`` (× ``SIGN_MARGIN``), send
    each once with wrk, and count what the ledger accepted."""
    kind: Kind = "single" if batch_size == 1 else "batch"
    count = max(1000, math.ceil(expected_per_s * duration_s * SIGN_MARGIN))
    count = math.ceil(count / batch_size) * batch_size
    started = time.monotonic()
    payments = sign_payments(seeded, count)
    bodies = payments if kind == "single" else batch_bodies(payments, batch_size)
    prefix = server.tmp / f"{kind}-{batch_size}.bodies"
    write_bodies(prefix, bodies)
    del payments, bodies
    say(f"  signed {count:,} payments in {time.monotonic() - started:.1f} s")
    path = "/v1/payments" if kind == "single" else "/v1/payments/batch"
    before = settled_tree_size(server.base)
    result = run_wrk(f"{server.base}{path}", prefix, kind, connections, duration_s)
    committed = settled_tree_size(server.base) - before
    target = f"{database} single" if kind == "single" else f"{database} batch {batch_size}"
    made = Measurement(
        target, kind, database, batch_size, connections, count, result, committed, run
    )
    say(
        f"  {result.requests_per_s:,.0f} req/s, {made.payments_per_s:,.0f} payments/s, "
        f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms "
        f"(ok {result.ok:,}, committed {committed:,}, replayed {result.replayed}, "
        f"refused {result.refused}, non-200 {result.non200})"
    )
    if result.exhausted_threads:
        say("  warning: the signed payments ran out before the end (the run stopped early)")
    return made


def _expected_rate(size: int, rates: dict[int, float], priors: dict[int, float]) -> float:
    """Payments/s to sign a batch run for: what this size did in an earlier run on the same
    database; else 1.5 × what it did on the other database; else 1.5 × the fastest batch size
    measured here; else a guess. (Single payments sign for the trivial endpoint's rate, their
    ceiling.)"""
    if size in rates:
        return rates[size]
    if size in priors:
        return priors[size] * 1.5
    return max(rates.values()) * 1.5 if rates else BATCH_RATE_GUESS


# --- report -----------------------------------------------------------------------------------


def _median_rows(measurements: list[Measurement]) -> list[dict[str, Any]]:
    """One row per target and load (connections): the median of each figure over its runs."""
    by_target: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for m in measurements:
        by_target.setdefault((m.target, m.connections), []).append(m.row())
    rows = []
    for runs in by_target.values():
        row = dict(runs[0])
        for name, value in runs[0].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                values = [r[name] for r in runs if r[name] is not None]
                row[name] = statistics.median(values)
        row["runs"] = len(runs)
        rows.append(row)
    return rows


def _rate(m: Measurement) -> float:
    return m.wrk.requests_per_s if m.kind == "trivial" else m.payments_per_s


def summarise(
    measurements: list[Measurement],
    serve_workers: int = 1,
    verify_per_s: dict[int, float] | None = None,
    cores: int = os.cpu_count() or 1,
) -> dict[str, Any]:
    """Median rows, each with its ratios to the trivial endpoint (one process, and as many
    processes as the ledger's HTTP workers; each the median of the runs' own ratios) and its
    target verdict. With ``verify_per_s`` (``verify_rate`` of each run), each ledger row also
    gets ``share_of_verify_ceiling``: the median over runs of its payments/s over what
    ``cores`` cores could verify in that run, doing nothing else.

    A run's ceiling is the trivial endpoint's best rate in that run, whichever load gave it:
    single payments at 64 connections are held to what the framework does at its best, not
    to what it does at 64."""
    rows = _median_rows(measurements)

    def best_of(ceiling_target: str) -> dict[int, float]:
        """Each run's best rate of ``ceiling_target``, over the loads it was measured at."""
        ceilings: dict[int, float] = {}
        for m in measurements:
            if m.target == ceiling_target:
                ceilings[m.run] = max(ceilings.get(m.run, 0.0), _rate(m))
        return ceilings

    def ratio(target: str, connections: int, ceilings: dict[int, float]) -> float | None:
        """The median over runs of the target's rate over the ceiling of the same run."""
        ratios = [
            _rate(m) / ceilings[m.run]
            for m in measurements
            if (m.target, m.connections) == (target, connections) and ceilings.get(m.run)
        ]
        return round(statistics.median(ratios), 3) if ratios else None

    trivial = best_of(trivial_target(1))
    same_workers = best_of(trivial_target(serve_workers))
    plain_route = best_of(trivial_target(1, plain=True))
    verify_ceilings = {run: cores * rate for run, rate in (verify_per_s or {}).items()}
    for row in rows:
        key = row["target"], row["connections"]
        row["ratio_to_trivial"] = ratio(*key, trivial)
        row["ratio_same_workers"] = ratio(*key, same_workers)
        row["ratio_plain_route"] = ratio(*key, plain_route)
        row["share_of_verify_ceiling"] = (
            ratio(*key, verify_ceilings) if row["kind"] != "trivial" else None
        )
        if row["kind"] == "single":
            row["goal"] = f"≥ {TARGET_SINGLE_RATIO:.0%} of trivial, p99 ≤ {TARGET_P99_MS:.0f} ms"
            row["meets_goal"] = bool(
                row["ratio_to_trivial"] is not None
                and row["ratio_to_trivial"] >= TARGET_SINGLE_RATIO
                and row["p99_ms"] <= TARGET_P99_MS
            )
        elif row["kind"] == "batch":
            goal = TARGET_BATCH_TPS[str(row["database"])]
            row["goal"] = f"≥ {goal:,.0f} payments/s"
            row["meets_goal"] = row["payments_per_s"] >= goal
        else:
            row["goal"], row["meets_goal"] = "the ceiling", None
    summary: dict[str, Any] = {"targets": rows}
    if verify_per_s:
        rate = statistics.median(verify_per_s.values())
        summary["ed25519"] = {
            "verify_us": round(1e6 / rate, 1),
            "cores": cores,
            "verify_ceiling_per_s": round(cores * rate),
            "note": "signed payments verified a second on one core (best of three tries, "
            "servers idle; median over runs), and on every core at once: no server that "
            "checks each signature can pass the ceiling on this machine",
        }
    return summary


def server_setup(serve_workers: int) -> dict[str, Any]:
    """What uvicorn's ``auto`` loop and http resolve to here, and the rest of the set-up."""
    import importlib.util

    import uvicorn

    have = importlib.util.find_spec
    return {
        "uvicorn": uvicorn.__version__,
        "workers": serve_workers,
        "loop": "uvloop" if have("uvloop") else "asyncio",
        "http": "httptools" if have("httptools") else "h11",
        "log_level": "warning",
        "why": "as `ledger serve` runs: one writer process (sequencer, engine, journal; a "
        "committer process writes the database) and HTTP worker processes that parse, "
        "validate and verify signatures and hand the writer what passed over a Unix socket; "
        "the trivial app is measured with one process, with as many as the ledger's workers, "
        "and with one process answering from a plain route as the ledger's single payments do",
    }


def format_table(summary: dict[str, Any]) -> str:
    head = (
        f"{'target':<22} {'conns':>5} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'payments/s':>11} {'ratio':>6} {'same-w':>6} {'plain':>6} {'verify':>6}  goal"
    )
    lines = [head, "-" * len(head)]
    for r in summary["targets"]:
        pay = "-" if r["payments_per_s"] is None else f"{r['payments_per_s']:,.0f}"
        ratio = "-" if r["ratio_to_trivial"] is None else f"{r['ratio_to_trivial']:.2f}"
        same = "-" if r["ratio_same_workers"] is None else f"{r['ratio_same_workers']:.2f}"
        plain = "-" if r["ratio_plain_route"] is None else f"{r['ratio_plain_route']:.2f}"
        share = r.get("share_of_verify_ceiling")
        verify = "-" if share is None else f"{share:.2f}"
        verdict = {True: "met", False: "NOT met", None: ""}[r["meets_goal"]]
        lines.append(
            f"{r['target']:<22} {r['connections']:>5} {r['requests_per_s']:>11,.0f} "
            f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {pay:>11} {ratio:>6} {same:>6} {plain:>6} "
            f"{verify:>6}  "
            f"{r['goal']} {verdict}".rstrip()
        )
    return "\n".join(lines)


def run(
    duration_s: int = DURATION_S,
    connections: Sequence[int] = CONNECTIONS,
    batch_connections: int = BATCH_CONNECTIONS,
    postgres: str | None = DEFAULT_POSTGRES,
    runs: int = 1,
    say: Say = print,
    serve_workers: int = WORKERS_DEFAULT,
    batch_duration_s: int = BATCH_DURATION_S,
) -> dict[str, Any]:
    """The whole benchmark; returns the JSON-able report.

    Every server (the trivial app, the ledger on SQLite and on PostgreSQL) is started and
    seeded first, and each round of ``runs`` then measures them one after the other: at each
    load in ``connections``, the trivial endpoint and single payments on each database; then
    each batch size. A ledger's figure is thus always a few minutes at most from the trivial
    ones it is divided by; this machine's speed drifts by a third within minutes, which
    measuring each target's runs together let into the ratios."""
    wrk_path()
    measurements: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        trivial = {
            trivial_target(w, plain): stack.enter_context(trivial_server(workdir, w, plain))
            for w, plain in [*((w, False) for w in sorted({1, serve_workers})), (1, True)]
        }
        trivial_prefix = _trivial_bodies(workdir)
        urls = {"sqlite": f"sqlite:///{workdir / 'sqlite' / 'ledger.db'}"}
        if postgres:
            urls["postgres"] = stack.enter_context(postgres_database(postgres))
        ledgers: dict[str, tuple[ServeProcess, Seeded]] = {}
        for database, url in urls.items():
            (workdir / database).mkdir()
            server = stack.enter_context(serving(url, workdir / database, workers=serve_workers))
            started = time.monotonic()
            seeded = seed_ledger(server.base, server.admin_file.read_text().strip())
            ledgers[database] = server, seeded
            say(
                f"{database}: ledger serve on {server.base}, seeded {len(seeded.payers)} payers "
                f"and {len(seeded.payees)} payees in {time.monotonic() - started:.1f} s"
            )
        # batches' payments/s measured so far, by database and batch size
        rates: dict[str, dict[int, float]] = {database: {} for database in ledgers}
        verify_per_s: dict[int, float] = {}
        for run in range(runs):
            verify_per_s[run] = verify_rate()
            say(f"run {run + 1}/{runs}: Ed25519 {1e6 / verify_per_s[run]:.1f} µs a verification")
            for conns in connections:
                ceiling = 0.0
                for target, base in trivial.items():
                    made = _measure_trivial(
                        base, trivial_prefix, target, conns, duration_s, run, say
                    )
                    measurements.append(made)
                    if target == trivial_target(1):
                        ceiling = made.wrk.requests_per_s
                for database, (server, seeded) in ledgers.items():
                    say(f"{database}: run {run + 1}/{runs}, single payments, {conns} connections")
                    made = _measure_payments(
                        server, seeded, database, 1, conns, duration_s, ceiling, say, run
                    )
                    measurements.append(made)
            for size in BATCH_SIZES:
                for database, (server, seeded) in ledgers.items():
                    others = {
                        s: r for db, by_size in rates.items() if db != database
                        for s, r in by_size.items()
                    }  # fmt: skip
                    expected = _expected_rate(size, rates[database], others)
                    say(
                        f"{database}: run {run + 1}/{runs}, batches of {size}, "
                        f"{batch_connections} connections"
                    )
                    made = _measure_payments(
                        server, seeded, database, size, batch_connections, batch_duration_s,
                        expected, say, run,
                    )  # fmt: skip
                    rates[database][size] = max(made.payments_per_s, 1.0)
                    measurements.append(made)
    report = summarise(measurements, serve_workers, verify_per_s)
    report.update(
        {
            "duration_s": duration_s,
            "batch_duration_s": batch_duration_s,
            "runs": runs,
            "wrk": {"threads": WRK_THREADS, "connections": list(connections),
                    "batch_connections": batch_connections},
            "machine": {"cpus": os.cpu_count(),
                        "note": "wrk shares the machine (same cores) with the servers and "
                        "the database; figures include its share of the CPU"},
            "server": server_setup(serve_workers),
            "published_figure": "accepted payments/s = min(ok answers, committed entries) "
            "/ wrk duration",
            "ratio": "median over runs of payments/s over the trivial endpoint's best "
            "requests/s in the same run (over the loads measured)",
            "measurements": [m.row() for m in measurements],
        }
    )  # fmt: skip
    return report


def _counts(text: str) -> tuple[int, ...]:
    """``64,128`` -> (64, 128): distinct, in the order given."""
    try:
        counts = tuple(dict.fromkeys(int(part) for part in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole numbers: {text!r}") from None
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.http_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--duration", type=int, default=DURATION_S, help="seconds per wrk run")
    parser.add_argument(
        "--connections", type=_counts, default=CONNECTIONS, metavar="N[,N...]",
        help="loads for the trivial endpoint and single payments (default "
        f"{','.join(map(str, CONNECTIONS))}); each is measured in every run",
    )  # fmt: skip
    parser.add_argument(
        "--batch-duration", type=int, default=BATCH_DURATION_S, help="seconds per batch run"
    )
    parser.add_argument("--batch-connections", type=int, default=BATCH_CONNECTIONS)
    parser.add_argument(
        "--postgres", default=DEFAULT_POSTGRES, help="PostgreSQL server URL; '' to skip"
    )
    parser.add_argument("--runs", type=int, default=1, help="runs per target; medians reported")
    parser.add_argument(
        "--serve-workers", type=int, default=WORKERS_DEFAULT,
        help=f"ledger serve's HTTP workers (default {WORKERS_DEFAULT}, as ledger serve here)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if min(args.duration, args.batch_duration, args.runs, *args.connections,
           args.batch_connections) < 1:  # fmt: skip
        parser.error(
            "--duration, --batch-duration, --runs and the connection counts must be at least 1"
        )
    if args.serve_workers < 1:
        parser.error("--serve-workers must be at least 1")

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        report = run(
            args.duration, args.connections, args.batch_connections, args.postgres or None,
            args.runs, say, args.serve_workers, args.batch_duration,
        )  # fmt: skip
    except BenchError as exc:
        sys.exit(f"http_bench: {exc}")
    if args.json:
        print(json.dumps(report))
        return
    print(format_table(report))
    setup = report["server"]
    print(
        f"\nmedians of {args.runs} run(s) of {args.duration} s ({args.batch_duration} s for "
        f"batches); wrk {WRK_THREADS} threads on the same {os.cpu_count()} cores as the servers "
        "and the database (its CPU share is in the figures). ledger serve: the writer and "
        f"{setup['workers']} HTTP workers; uvicorn {setup['uvicorn']}, {setup['loop']} + "
        f"{setup['http']}. payments/s = accepted payments "
        "(ok answers, capped by the tree's growth) per second; ratio = payments/s over the "
        "trivial endpoint's best requests/s in the same run with one process; same-w = with as "
        "many processes as the ledger's HTTP workers; plain = with one process answering from "
        "a plain route, as the ledger's POST /v1/payments does."
    )
    ed = report.get("ed25519")
    if ed:
        print(
            f"Ed25519 here: {ed['verify_us']} µs to verify a signed payment on one core, so "
            f"{ed['cores']} cores verify at most {ed['verify_ceiling_per_s']:,} payments/s doing "
            "nothing else; verify = payments/s over that ceiling."
        )


if __name__ == "__main__":
    main()
