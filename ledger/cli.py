"""The ``ledger`` command: serve, verify, audit-load, demo, bench, crash-test, keys, credit."""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ledger.config import Settings

app = typer.Typer(
    help="The e-CNY reference ledger: a signed, append-only, double-entry ledger.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Central-bank and operator API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
credit_app = typer.Typer(
    help="Credit scorecards on any CSV: train, score, evaluate.", no_args_is_help=True
)
app.add_typer(credit_app, name="credit")
err = Console(stderr=True)

DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database", help="SQLAlchemy URL. Default: $LEDGER_DATABASE_URL or sqlite:///ledger.db"
    ),
]
KeyFileOpt = Annotated[
    Path | None,
    typer.Option("--key-file", help="Signing key. Default: $LEDGER_KEY_FILE or beside the DB."),
]


@app.command()
def serve(
    database: DatabaseOpt = None,
    key_file: KeyFileOpt = None,
    host: Annotated[str | None, typer.Option(help="Default 127.0.0.1 (local only).")] = None,
    port: Annotated[int | None, typer.Option(help="Default 8000.")] = None,
    admin_key_file: Annotated[
        Path | None,
        typer.Option(help="Also write the first central-bank key here (mode 0600)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="HTTP worker processes sharing the one writer. Default: $LEDGER_WORKERS "
            "or one per core (up to 8).",
        ),
    ] = None,
) -> None:
    """Run the ledger's HTTP API (OpenAPI at /docs): the writer in this process, the API in
    --workers processes. SIGINT or SIGTERM stops it after the requests in hand."""
    import time

    from rich.markup import escape

    from ledger import auth
    from ledger.process import few_malloc_arenas
    from ledger.server import WORKERS_DEFAULT, LedgerServer, signals_stop
    from ledger.service import LedgerService
    from merchant_api.egress import EgressPolicy  # composed in server.py; its setting checked here

    try:
        EgressPolicy.from_env()
    except ValueError as exc:
        err.print(f"[red]error[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    few_malloc_arenas()
    settings = Settings.from_env(database, key_file, host, port)
    count = workers or int(os.environ.get("LEDGER_WORKERS", WORKERS_DEFAULT))

    def first_key(ledger: LedgerService) -> None:
        if not auth.has_central_bank_key(ledger.db):
            new = auth.create_api_key(ledger.db, auth.ROLE_CENTRAL_BANK, "", "first key")
            err.print("[bold]Central-bank API key[/] (shown once; the ledger keeps only a hash):")
            sys.stderr.write(f"  {new.secret}\n")
            if admin_key_file is not None:
                _write_secret(admin_key_file, new.secret)

    with (
        signals_stop() as caught,
        LedgerServer(settings, count, before_workers=first_key) as server,
    ):
        ledger = server.ledger
        assert ledger is not None
        err.print(
            f"ledger {ledger.origin} on {settings.database_url}, "
            f"{ledger.committed_size()} entries; HTTP workers: {count}; "
            f"http://{settings.host}:{settings.port}/docs",
            soft_wrap=True,
        )
        while not caught:
            server.watch()
            time.sleep(0.2)


@app.command()
def verify(
    database: DatabaseOpt = None,
    statement: Annotated[
        Path | None,
        typer.Option(
            "--statement",
            help="Check a merchant's daily statement file instead: its sha256, the ledger's "
            "signature, and every row, total and balance against the journal.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    public_key: Annotated[
        str | None,
        typer.Option(
            help="With --statement: the ledger public key you trust (base64, as GET "
            "/v1/public_key serves it). Default: the key the database names."
        ),
    ] = None,
) -> None:
    """Recompute the Merkle tree and every balance from the journal; check every signature.

    Exits 1 naming the first entry, checkpoint, tile or account that does not match (with
    --statement: the first thing in the statement that does not)."""
    from ledger.store.database import make_engine
    from ledger.verify import verify as run_verify

    settings = Settings.from_env(database)
    if statement is not None:
        _verify_statement(settings.database_url, statement, public_key)
        return
    engine = make_engine(settings.database_url)
    with Progress(
        TextColumn("verifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("entries", total=None)
        report = run_verify(
            engine, lambda done, total: bar.update(task, completed=done, total=total)
        )
    engine.dispose()
    if not report.ok:
        err.print(f"[red]FAIL[/] {report.problem}")
        raise typer.Exit(1)
    print(
        f"OK {report.entries} entries, {report.checkpoints} signed checkpoints, "
        f"{report.accounts} accounts, {report.tiles} tiles, {report.signatures} wallet "
        f"signatures; zero-sum (posted {report.totals[1]} = {report.totals[3]}, "
        f"pending {report.totals[0]} = {report.totals[2]}); e-CNY in circulation "
        f"{report.circulation_fen} = issued {report.issued_fen} - redeemed {report.redeemed_fen}"
    )


def _verify_statement(url: str, path: Path, public_key: str | None) -> None:
    import base64
    import binascii

    from rich.markup import escape

    from ledger.store.database import make_engine
    from merchant_api.statements import StatementMismatch, verify_file  # composed like `serve`

    try:
        key = base64.b64decode(public_key, validate=True) if public_key else None
    except (binascii.Error, ValueError):
        err.print("[red]error[/] --public-key is not base64")
        raise typer.Exit(2) from None
    engine = make_engine(url)
    try:
        checked = verify_file(engine, path.read_bytes().decode("utf-8"), key)
    except (StatementMismatch, UnicodeDecodeError) as exc:
        err.print(f"[red]FAIL[/] {escape(str(path))}: {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    print(
        f"OK statement of {checked.merchant} for {checked.day} "
        f"({'complete' if checked.complete else 'partial'}): signed by the ledger, sha256 "
        f"{checked.sha256}; {checked.rows} rows, totals and balances match the journal at tree "
        f"size {checked.tree_size}"
    )


@app.command()
def demo(
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Where the fresh ledger goes. Default: a new temporary one."),
    ] = None,
) -> None:
    """Play a small pilot day on a fresh embedded ledger, over real HTTP, and summarise it:
    issuance, wallets, QR and payment-code payments, refunds, webhooks, a settlement,
    statements, and `ledger verify`."""
    import tempfile

    from ledger.demo import run, summary

    target = directory or Path(tempfile.mkdtemp(prefix="ledger-demo-"))
    try:
        result = run(target, lambda line: err.print(f"  {line}"))
    except FileExistsError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    typer.echo(summary(result))
    if not result["verify"].ok or any(not s["check"] for s in result["statements"]):
        raise typer.Exit(1)


@app.command("audit-load")
def audit_load(
    record: Annotated[
        list[Path],
        typer.Argument(
            help="Record files, or directories of *.ids files, written by the load clients "
            "(lines '<ack|rej|unk> <transfer id>').",
            exists=True,
        ),
    ],
    database: DatabaseOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """After a load or crash run: every acknowledged transfer id is in the journal exactly
    once, no rejected one is, no unanswered one is there twice, and `ledger verify` passes.

    Exits 1 naming what does not hold."""
    from ledger.audit import RecordError, audit, read_record
    from ledger.store.database import make_engine

    try:
        records = read_record(record)
    except RecordError as exc:
        err.print(f"[red]error[/] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    engine = make_engine(Settings.from_env(database).database_url)
    try:
        with Progress(
            TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=err, transient=True,
        ) as bar:  # fmt: skip
            task = bar.add_task("entries", total=None)
            report = audit(
                engine, records, lambda done, total: bar.update(task, completed=done, total=total)
            )
    finally:
        engine.dispose()
    print(json.dumps(report.as_dict()) if json_out else report.summary())
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def bench(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    runs: Annotated[int, typer.Option(help="Runs per figure; the median is reported.")] = 5,
    transfers: Annotated[int, typer.Option(help="Transfers per run.")] = 200_000,
    signed: Annotated[int, typer.Option(help="Signed wallet payments per run.")] = 50_000,
    postgres: Annotated[
        str,
        typer.Option(help="Server for the PostgreSQL figures ('' to skip)."),
    ] = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
) -> None:
    """Measure transfers/s in-process: engine, SQLite, PostgreSQL, one hot account."""
    from ledger.bench import run_all

    results = run_all(
        runs=runs, transfers=transfers, postgres_url=postgres or None, log=err.print, signed=signed
    )
    if json_out:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key:32} {value}")


@app.command("crash-test")
def crash_test(
    database: Annotated[
        str | None,
        typer.Option(
            "--database",
            help="SQLAlchemy URL of a FRESH ledger (it gets test payments). "
            "Default: SQLite in the work directory.",
        ),
    ] = None,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="Key, server logs and crash.ids go here. Default: a new temporary one."
        ),
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Kill/restart rounds.")] = 10,
    clients: Annotated[int, typer.Option(min=1, help="Concurrent paying clients.")] = 4,
    seed: Annotated[
        int | None, typer.Option(help="Fixes delays, kill modes, batches. Default: random.")
    ] = None,
    verify_every: Annotated[
        int,
        typer.Option(
            "--verify-every",
            min=1,
            help="Full `ledger verify` replay every N rounds (and at the end).",
        ),
    ] = 1,
) -> None:
    """SIGKILL a real `ledger serve` at random moments while clients pay, restart it, and check
    after each round: nothing acknowledged lost, nothing applied twice (unanswered batches are
    retried with the same ids), the same Merkle log continued, balances equal a journal replay.

    Exits 1 naming what does not hold."""
    from ledger.crash import cli_main

    code = cli_main(database, directory, rounds, clients, seed, verify_every)
    if code:
        raise typer.Exit(code)


@keys_app.command("create")
def keys_create(
    operator: Annotated[str, typer.Option(help="The operator this key acts for.")],
    role: Annotated[str, typer.Option(help="operator or central_bank")] = "operator",
    name: Annotated[str, typer.Option(help="A label for people.")] = "",
    database: DatabaseOpt = None,
) -> None:
    """Issue an API key. It is printed once; only its hash is stored."""
    from ledger import auth
    from ledger.store.database import make_engine, migrate

    engine = make_engine(Settings.from_env(database).database_url)
    migrate(engine)
    try:
        new = auth.create_api_key(engine, role, operator, name)
    except ValueError as exc:
        err.print(f"[red]error[/] {exc}")
        raise typer.Exit(2) from None
    print(new.secret)


@keys_app.command("revoke")
def keys_revoke(key_id: str, database: DatabaseOpt = None) -> None:
    """Revoke a key by its id (the part after lk_cb_/lk_op_)."""
    from ledger import auth
    from ledger.store.database import make_engine

    engine = make_engine(Settings.from_env(database).database_url)
    if not auth.revoke_api_key(engine, key_id):
        err.print(f"[red]error[/] no active key {key_id}")
        raise typer.Exit(1)
    print(f"revoked {key_id}")


# -- credit scorecards ---------------------------------------------------------------------------

DataOpt = Annotated[Path, typer.Option("--data", help="A CSV file, one applicant per row.")]
TargetOpt = Annotated[str, typer.Option("--target", help="The column holding the outcome.")]
BadOpt = Annotated[str, typer.Option("--bad", help="The outcome value that means 'bad'.")]


def _credit_data(data: Path, target: str, bad: str) -> Any:
    from ledger.credit.scorecard import CreditDataError, labelled, read_table

    try:
        return labelled(read_table(data), target, bad)
    except CreditDataError as exc:
        err.print(f"[red]error[/] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None


@credit_app.command("train")
def credit_train(
    data: DataOpt,
    target: TargetOpt,
    bad: BadOpt,
    out: Annotated[Path, typer.Option("--out", help="Where to write the model.")],
) -> None:
    """Fit a scorecard: optimal monotonic WoE bins, logistic regression, points (600 at 50:1
    good:bad odds, 20 points to double them). Writes MODEL and its points table
    MODEL.points.csv."""
    from ledger.credit.scorecard import CreditDataError, Scorecard, points_table_path

    labelled = _credit_data(data, target, bad)
    try:
        with err.status(f"training on {len(labelled.bad):,} applicants"):
            card = Scorecard.train(labelled)
    except CreditDataError as exc:
        err.print(f"[red]error[/] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    card.save(out)
    kept = card.kept()
    err.print(
        f"{out}: {len(kept)} of {len(card.characteristics)} characteristics kept "
        f"({', '.join(kept)}); points table in {points_table_path(out)}",
        soft_wrap=True,
    )


@credit_app.command("score")
def credit_score(
    model: Annotated[Path, typer.Option("--model", help="A model written by `credit train`.")],
    data: DataOpt,
    cutoff: Annotated[
        float | None,
        typer.Option(help="Approve at or above this score; declines get reason codes."),
    ] = None,
) -> None:
    """Score every row of a CSV: prints CSV with the row number, score, probability of bad,
    decision (with --cutoff) and the reasons: the characteristics that cost the most points
    (up to four, always given for a decline)."""
    import csv

    from ledger.credit.scorecard import CreditDataError, Scorecard, read_table

    try:
        card = Scorecard.load(model)
        table = read_table(data)
        scores = card.score(table)
        risk = card.probability_bad(table)
        reasons = card.reasons(table)
    except CreditDataError as exc:
        err.print(f"[red]error[/] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    writer = csv.writer(sys.stdout)
    writer.writerow(["row", "score", "probability_bad", "decision", "reasons"])
    for i, (score, p, why) in enumerate(zip(scores, risk, reasons, strict=True)):
        decision = "" if cutoff is None else ("approve" if score >= cutoff else "decline")
        writer.writerow([i, f"{score:.1f}", f"{p:.4f}", decision, "; ".join(r.text() for r in why)])


@credit_app.command("evaluate")
def credit_evaluate(
    data: DataOpt,
    target: TargetOpt,
    bad: BadOpt,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Stratified 5-fold cross-validation with 3 seeds: mean and spread of AUC, KS and Gini for
    the scorecard and, on the same folds, for a gradient-boosting baseline."""
    from ledger.credit.evaluate import evaluate

    labelled = _credit_data(data, target, bad)
    with Progress(
        TextColumn("cross-validating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("folds", total=None)
        try:
            report = evaluate(
                labelled, progress=lambda done, total: bar.update(task, completed=done, total=total)
            )
        except ValueError as exc:
            err.print(f"[red]error[/] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
    if json_out:
        print(json.dumps(report))
        return
    folds = f"{report['folds']}-fold x {len(report['seeds'])} seeds"
    print(f"{report['applicants']:,} applicants, {report['bad_rate']:.1%} bad, {folds}")
    print(f"{'':12} {'AUC':>14} {'KS':>14} {'Gini':>14}")
    print(
        f"{'scorecard':12} {report['auc_mean']:8.3f} ± {report['auc_std']:.3f}"
        f" {report['ks_mean']:8.3f} ± {report['ks_std']:.3f}"
        f" {report['gini_mean']:8.3f} ± {report['gini_std']:.3f}"
    )
    print(
        f"{'baseline':12} {report['baseline_auc_mean']:8.3f} ± {report['baseline_auc_std']:.3f}"
        f" {report['baseline_ks_mean']:8.3f}"
    )
    print(f"baseline: {report['baseline']}")


@credit_app.command("card")
def credit_card(
    data: DataOpt,
    target: TargetOpt,
    bad: BadOpt,
    protected: Annotated[
        list[str],
        typer.Option(
            "--protected",
            help="A protected attribute, kept out of the model and audited for fairness: "
            "COLUMN (groups are its values) or COLUMN:THRESHOLD (below / at or above). Repeat "
            "for several.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the card, plots and model.")],
    basis: Annotated[
        str,
        typer.Option(
            "--basis",
            help="The data's consent or licence basis, quoted in the card.",
        ),
    ],
    cutoff: Annotated[
        float | None,
        typer.Option(help="Approval cut-off. Default: approve the data's share of good."),
    ] = None,
) -> None:
    """Build a scorecard and its model card: metrics with their spread, fairness across the
    protected groups, stability, and ROC, score and calibration plots (OUT/model_card.md)."""
    from ledger.credit.card import build
    from ledger.credit.monitoring import Protected
    from ledger.credit.scorecard import CreditDataError

    labelled = _credit_data(data, target, bad)
    try:
        attributes = [Protected.parse(p) for p in protected]
        with err.status("building the model card") as status:
            report = build(
                labelled, attributes, out, source=data.name, basis=basis, cutoff=cutoff,
                command=shlex.join(["ledger", *sys.argv[1:]]),
                progress=lambda step: status.update(step),
            )  # fmt: skip
    except CreditDataError as exc:
        err.print(f"[red]error[/] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    cv = report["cross_validation"]
    err.print(
        f"{out / 'model_card.md'}: AUC {cv['auc_mean']:.3f} ± {cv['auc_std']:.3f} "
        f"(baseline {cv['baseline_auc_mean']:.3f}), KS {cv['ks_mean']:.3f}; plots, model and "
        f"report.json beside it",
        soft_wrap=True,
    )


@credit_app.command("synth")
def credit_synth(
    out: Annotated[Path, typer.Option("--out", help="CSV to write.")],
    merchants: Annotated[int, typer.Option(min=1, max=100_000)] = 1000,
    customers: Annotated[int, typer.Option(min=10, max=1_000_000)] = 3000,
    days: Annotated[int, typer.Option(min=2, max=730)] = 365,
    seed: int = 1,
) -> None:
    """A seeded synthetic pilot (ledger/credit/synthetic.py): one row of cash-flow features
    per merchant and whether it defaulted, for `credit train --target defaulted --bad yes`."""
    from ledger.credit import synthetic

    with err.status(f"{merchants:,} merchants over {days} days"):
        truth = synthetic.plan(merchants, customers, days, seed)
        sold = synthetic.sales(truth, customers, days, seed)
        table = synthetic.features_table(
            truth, sold, days, synthetic.refunds(truth, sold, days, seed)
        )
    table.to_csv(out, index=False)
    bad = int((table.defaulted == "yes").sum())
    err.print(f"{out}: {len(table):,} merchants, {bad:,} defaulted", soft_wrap=True)


@credit_app.command("rescore")
def credit_rescore(
    model: Annotated[Path, typer.Option("--model", help="A model written by `credit train`.")],
    out: Annotated[Path, typer.Option("--out", help="CSV of scores to write.")],
    data: Annotated[
        Path | None, typer.Option("--data", help="A features table, one borrower per row.")
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            help="Instead of --data: a running ledger, read as the lender whose API key "
            "--api-key-file holds (every live consent granted to it; each read journaled)."
        ),
    ] = None,
    api_key_file: Annotated[
        Path | None, typer.Option("--api-key-file", help="The lender's API key, for --server.")
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="A Dask scheduler's address. Default: a LocalCluster on 127.0.0.1."),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="LocalCluster workers.")] = 2,
) -> None:
    """Re-score borrowers with Dask (the nightly batch): score, probability of bad and the
    top reason per row, in the table's order; from --server, each row also names the borrower
    and the consent its features were read under."""
    from contextlib import nullcontext

    import httpx
    import pandas as pd
    from dask.distributed import Client

    from ledger.credit.rescore import LedgerReadError, features_from_ledger, local_cluster, rescore
    from ledger.credit.scorecard import CreditDataError, Scorecard, read_table

    if (data is None) == (server is None) or (server is not None and api_key_file is None):
        err.print("[red]error[/] give --data FILE, or --server URL with --api-key-file")
        raise typer.Exit(2)
    ids = pd.DataFrame()
    try:
        card = Scorecard.load(model)
        if server is not None and api_key_file is not None:
            key = api_key_file.read_text().strip()
            headers = {"Authorization": f"Bearer {key}"}
            with (
                err.status(f"reading features under consents from {server}"),
                httpx.Client(base_url=server, headers=headers, timeout=30) as http,
            ):
                table = features_from_ledger(http)
            ids, table = table[["borrower", "consent"]], table.drop(columns=["borrower", "consent"])
        else:
            assert data is not None
            table = read_table(data)
        if len(table):
            card.select(table)
    except (CreditDataError, LedgerReadError, httpx.HTTPError, OSError) as exc:
        err.print(f"[red]error[/] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    if len(table):
        cluster = local_cluster(workers) if scheduler is None else nullcontext(Client(scheduler))
        with err.status(f"re-scoring {len(table):,} rows"), cluster as client:
            scores = rescore(client, card, table)
    else:
        scores = pd.DataFrame(columns=["score", "probability_bad", "top_reason"])
    pd.concat([ids.reset_index(drop=True), scores], axis=1).to_csv(out, index=False)
    err.print(f"{out}: {len(scores):,} rows scored", soft_wrap=True)


@credit_app.command("drift")
def credit_drift(
    model: Annotated[Path, typer.Option("--model", help="A model written by `credit train`.")],
    baseline: Annotated[Path, typer.Option("--baseline", help="The population it was built on.")],
    current: Annotated[Path, typer.Option("--current", help="The population to compare.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Population stability index per characteristic and on the score. Exits 1 when any shift
    is significant (PSI > 0.25)."""
    from ledger.credit.monitoring import PSI_SIGNIFICANT, drift
    from ledger.credit.scorecard import CreditDataError, Scorecard, read_table

    try:
        table = drift(Scorecard.load(model), read_table(baseline), read_table(current))
    except CreditDataError as exc:
        err.print(f"[red]error[/] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    if json_out:
        print(json.dumps({"psi": table.to_dict("records")}))
    else:
        for row in table.itertuples():
            print(f"{row.characteristic:55} {row.psi:7.3f}  {row.verdict}")
    if (table.psi > PSI_SIGNIFICANT).any():
        raise typer.Exit(1)


def _write_secret(path: Path, secret: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")


if __name__ == "__main__":
    app()
