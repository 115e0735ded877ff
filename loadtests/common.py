"""What every load profile shares: its options, the traffic shapes, the seed, the record of
acknowledged transfer ids, the SLO gate, the reports and the audit after the run.

Importing this module from a locustfile registers it all with locust's event hooks, so a
profile is an ordinary locustfile: ``locust -f loadtests/pilot.py --host http://127.0.0.1:8000``.

* **Options** (each also an environment variable): ``--shape`` (``LOAD_SHAPE``: ``steady``,
  ``lunch_peak``, ``double11``), ``--base-users``, ``--shape-seconds``, ``--slo-p99-ms``,
  ``--slo-failure-ratio``, ``--report-dir``, ``--cb-key`` (``LEDGER_CB_KEY``),
  ``--ledger-database`` (``LEDGER_DATABASE_URL``), ``--shoppers``, ``--merchants``,
  ``--no-audit``.
* **Shapes** scale ``--base-users`` over ``--shape-seconds``; the run ends with the shape.
* **Reports**: the CSV files (``stats``), the HTML report, ``summary.json`` (throughput,
  latency, SLO verdicts, audit) and the record go to ``--report-dir``.
* **SLO gate**: the process exits 1 when the failure ratio or the p99 latency (all requests)
  passes its bound, or when the audit fails.
* **Audit** (headless runs, on the master): ``ledger.audit`` checks every acknowledged transfer
  id against the journal, then ``ledger verify`` runs; like ``ledger audit-load``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Final, TextIO

import gevent
from gevent.lock import Semaphore
from locust import LoadTestShape, events
from locust import log as locust_log
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSVFileWriter

from loadtests.seed import Seed, cache_path, load_cached, seed
from loadtests.shapes import SHAPES, users_at
from wallet_sdk import WalletKeys

log = logging.getLogger("loadtests")
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per seeding call is noise
logging.getLogger("alembic").setLevel(logging.WARNING)

SLO_P99_MS: Final = 500.0
SLO_FAILURE_RATIO: Final = 0.01
ORDERS_WAITING_MAX: Final = 10_000
"""Orders the merchants created, waiting for a shopper to scan them (per load process)."""


class PilotShape(LoadTestShape):
    """``--shape`` of ``--base-users`` over ``--shape-seconds``, then stop."""

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        options = options_of(self.runner.environment)
        run_time = self.get_run_time()
        if run_time >= options.shape_seconds:
            return None
        users = users_at(
            options.shape, options.base_users, run_time, options.shape_seconds, options.ramp_seconds
        )
        return users, float(max(10, options.base_users * 20))


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default="steady",
        env_var="LOAD_SHAPE",
        help="steady; lunch_peak (ramps to 5x and back); double11 (a 20x burst)",
    )
    parser.add_argument(
        "--base-users",
        type=int,
        default=10,
        env_var="LOAD_BASE_USERS",
        help="Users at 1x of the shape (default 10).",
    )
    parser.add_argument(
        "--shape-seconds",
        type=float,
        default=120.0,
        env_var="LOAD_SHAPE_SECONDS",
        help="Length of the run (default 120).",
    )
    parser.add_argument(
        "--ramp-seconds",
        type=float,
        default=0.0,
        env_var="LOAD_RAMP_SECONDS",
        help="Start the users over this many seconds at the start of the run, in a straight "
        "line (default 0: all at once).",
    )
    parser.add_argument(
        "--slo-p99-ms",
        type=float,
        default=SLO_P99_MS,
        env_var="LOAD_SLO_P99_MS",
        help=f"Exit 1 if p99 of all requests passes this (default {SLO_P99_MS:g}).",
    )
    parser.add_argument(
        "--slo-failure-ratio",
        type=float,
        default=SLO_FAILURE_RATIO,
        env_var="LOAD_SLO_FAILURE_RATIO",
        help=f"Exit 1 if failures/requests passes this (default {SLO_FAILURE_RATIO:g}).",
    )
    parser.add_argument(
        "--report-dir",
        default="loadtest-reports",
        env_var="LOAD_REPORT_DIR",
        help="CSV and HTML reports, summary.json and the record go here.",
    )
    parser.add_argument(
        "--cb-key",
        default="",
        env_var="LEDGER_CB_KEY",
        is_secret=True,
        help="The central-bank API key (to seed).",
    )
    parser.add_argument(
        "--ledger-database",
        default="",
        env_var="LEDGER_DATABASE_URL",
        help="The server's database, for the audit after a headless run.",
    )
    parser.add_argument("--shoppers", type=int, default=1000, env_var="LOAD_SHOPPERS")
    parser.add_argument("--merchants", type=int, default=20, env_var="LOAD_MERCHANTS")
    parser.add_argument("--no-audit", action="store_true", help="Skip the audit after the run.")


# --- per-process state -------------------------------------------------------------------------


class _Process:
    def __init__(self) -> None:
        self.seed: Seed | None = None
        self.seed_error: str | None = None
        self.shopper_keys: list[WalletKeys] = []
        self.lock = Semaphore()
        self.orders: deque[dict[str, Any]] = deque(maxlen=ORDERS_WAITING_MAX)
        self.record: TextIO | None = None
        self.record_dir: Path | None = None
        self.csv_writer: StatsCSVFileWriter | None = None
        self.csv_greenlet: gevent.Greenlet | None = None


STATE = _Process()


def options_of(environment: Environment) -> Any:
    assert environment.parsed_options is not None, "run under locust's command line"
    return environment.parsed_options


def is_worker(environment: Environment) -> bool:
    return isinstance(environment.runner, WorkerRunner)


def report_dir(environment: Environment) -> Path:
    return Path(options_of(environment).report_dir)


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    STATE.record_dir = report_dir(environment) / "record"
    if is_worker(environment):
        return
    out = report_dir(environment)
    out.mkdir(parents=True, exist_ok=True)
    if not options.html_file:
        options.html_file = str(out / "report.html")
    if not options.csv_prefix:  # locust's own --csv wins; otherwise write the CSVs here
        STATE.csv_writer = StatsCSVFileWriter(
            environment, PERCENTILES_TO_REPORT, str(out / "stats"), full_history=False
        )
        STATE.csv_greenlet = gevent.spawn(STATE.csv_writer.stats_writer)
    if options.headless and not options.no_audit and not options.ledger_database:
        raise SystemExit(
            "a headless run ends with an audit of the journal: pass --ledger-database URL "
            "(or LEDGER_DATABASE_URL) as the server uses it, or --no-audit"
        )


@events.test_start.add_listener
def _test_start(environment: Environment, **_: Any) -> None:
    if is_worker(environment):  # the master's options have arrived with the spawn message
        STATE.record_dir = report_dir(environment) / "record"
        return
    assert STATE.record_dir is not None
    STATE.record_dir.mkdir(parents=True, exist_ok=True)
    for old in STATE.record_dir.glob("*.ids"):  # a record is one run's
        old.unlink()
    if STATE.record is not None:
        STATE.record.close()
        STATE.record = None
    try:
        seed_for(environment)  # seed (or check the cache) before the first user starts
    except Exception as exc:
        log.error("seeding failed, stopping: %s", exc)
        STATE.seed_error = str(exc)
        environment.process_exit_code = 2
        assert environment.runner is not None
        gevent.spawn_later(0.1, environment.runner.quit)


def seed_for(environment: Environment) -> Seed:
    """This process's seed: made or refreshed by the master (or a lone process), read from the
    cache by workers."""
    with STATE.lock:
        if STATE.seed is not None:
            return STATE.seed
        if STATE.seed_error is not None:
            raise StopUser()
        options = options_of(environment)
        host = environment.host or options.host
        if is_worker(environment):
            import httpx

            public_key = httpx.get(f"{host}/v1/public_key", timeout=30).json()["public_key"]
            STATE.seed = load_cached(cache_path(host, public_key))
        else:
            if not options.cb_key:
                raise SystemExit("seeding needs the central-bank key: --cb-key or LEDGER_CB_KEY")
            STATE.seed = seed(host, options.cb_key, options.shoppers, options.merchants, log.info)
        return STATE.seed


def shopper_keys(made: Seed) -> list[WalletKeys]:
    """The shoppers' keys, one object per wallet in this process (each keeps its own signed
    requests' timestamps increasing, which the server's replay check needs)."""
    if not STATE.shopper_keys:
        STATE.shopper_keys = made.shopper_keys()
    return STATE.shopper_keys


# --- the record of transfer ids (see ledger.audit) --------------------------------------------


def record(outcome: str, transfer_id: str) -> None:
    """Note what this process saw for a transfer id: ``ack``, ``rej`` or ``unk``."""
    if STATE.record is None:
        assert STATE.record_dir is not None
        STATE.record_dir.mkdir(parents=True, exist_ok=True)
        name = f"{socket.gethostname()}-{os.getpid()}.ids"
        STATE.record = (STATE.record_dir / name).open("a", buffering=1)  # a line at a time
    STATE.record.write(f"{outcome} {transfer_id}\n")


def new_id() -> str:
    return str(uuid.uuid4())


# --- the end of a run: SLO gate, summary, audit -------------------------------------------------


@events.quitting.add_listener
def _quitting(environment: Environment, **_: Any) -> None:
    if is_worker(environment) or environment.parsed_options is None:
        return
    options = environment.parsed_options
    total = environment.stats.total
    p99 = total.get_response_time_percentile(0.99) or 0.0
    summary: dict[str, Any] = {
        "profile": Path(options.locustfile).stem if options.locustfile else None,
        "shape": options.shape,
        "base_users": options.base_users,
        "distributed": isinstance(environment.runner, MasterRunner),
        "requests": total.num_requests,
        "failures": total.num_failures,
        "failure_ratio": round(total.fail_ratio, 6),
        "requests_per_s": round(total.total_rps, 1),
        "p50_ms": total.get_response_time_percentile(0.5),
        "p99_ms": p99,
        "slo": {"p99_ms": options.slo_p99_ms, "failure_ratio": options.slo_failure_ratio},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    breaches = []
    if total.num_requests == 0:
        breaches.append("no requests were made")
    if total.fail_ratio > options.slo_failure_ratio:
        breaches.append(f"failure ratio {total.fail_ratio:.4f} > {options.slo_failure_ratio:g}")
    if p99 > options.slo_p99_ms:
        breaches.append(f"p99 {p99:.0f} ms > {options.slo_p99_ms:g} ms")
    runner = environment.runner
    crashed = sum(e["count"] for e in runner.exceptions.values()) if runner is not None else 0
    if crashed:
        breaches.append(f"{crashed} exceptions in the load users' own code (see the report)")
    summary["slo_breaches"] = breaches
    if options.headless and not options.no_audit:
        summary["audit"] = _audit(options.ledger_database)
        if not summary["audit"]["ok"]:
            breaches.append("audit failed")
        if summary["audit"]["acknowledged"] == 0:
            breaches.append("no acknowledged transfer ids were recorded: nothing to audit")
    summary["ok"] = not breaches
    out = report_dir(environment)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if STATE.csv_writer is not None:
        # stop the writer's loop before its files close: a master still yields while it tells
        # its workers to quit, and the loop's next pass would write to a closed file
        if STATE.csv_greenlet is not None:
            STATE.csv_greenlet.kill(block=True)
        STATE.csv_writer.close_files()
    verdict = "SLO met" if not breaches else "SLO FAILED: " + "; ".join(breaches)
    log.info(
        "%s: %d requests, %.1f/s, p50 %s ms, p99 %s ms, failures %.4f; reports in %s",
        verdict,
        total.num_requests,
        total.total_rps,
        summary["p50_ms"],
        p99,
        total.fail_ratio,
        out,
    )
    # set either way: left unset, locust exits 1 on any failed request, even within the bound
    # (its 2 for a greenlet's unhandled exception stays)
    if breaches:
        environment.process_exit_code = 1
    elif not locust_log.unhandled_greenlet_exception:
        environment.process_exit_code = 0


def _audit(database_url: str) -> dict[str, Any]:
    from ledger.audit import audit, read_record
    from ledger.store.database import make_engine

    assert STATE.record_dir is not None
    if STATE.record is not None:
        STATE.record.flush()
    engine = make_engine(database_url)
    try:
        report = audit(engine, read_record([STATE.record_dir]))
    finally:
        engine.dispose()
    log.info("%s", report.summary())
    return report.as_dict()
