"""Crash safety: kill a real ``ledger serve`` with SIGKILL over and over, and check what survives.

``run`` starts ``ledger serve`` on a database, has several client threads pay in batches, and at a
random moment SIGKILLs the server, usually with requests in flight. It restarts the server on the
same database and key, and repeats. Sometimes the committer process dies in the same instant
(as if the machine lost power to both), sometimes only the server (its committer then finishes
the commit in hand and exits, releasing the writer lock).

A request whose answer never came (connection reset, timeout, 5xx) is never guessed about: its
ids are recorded ``unk`` and, after the restart, the same batch is sent again with the same ids
until an answer comes. The ledger then answers with the original outcome (``replayed``) if the
commit happened before the crash, or applies it now if it did not. After every round:

* **nothing lost, nothing twice**: every acknowledged id is in the journal exactly once, no
  rejected id is, no id is there twice (``ledger.audit``, over that round's ids), and the log holds
  exactly the acknowledged transfers (tree size = accounts + acknowledged);
* **each answer is the right one**: payments answer ``ok``, the payments from an empty account
  (planted in some batches) ``exceeds_credits``, before and after the crash alike; sending a
  resolved batch once more returns every item ``replayed``;
* **the same Merkle log continues**: every checkpoint a client saw before the kill, and the last
  one of the previous round, is signed by the ledger's key and provably a prefix of the newest
  (RFC 9162 consistency proof), and the ledger still serves the same checkpoint at that size;
  an acknowledged transfer is inside the next checkpoint its client reads;
* **balances equal the acknowledgements**: each account's posted debits and credits, read over
  the API, equal the sum of what was acknowledged;
* **balances equal a replay of the journal**: ``ledger.verify.verify`` (an independent replay of
  every entry, the Merkle tiles, every checkpoint's root and signature, zero-sum) every
  ``verify_every`` rounds and always at the end.

Once per run a second ``ledger serve`` on the same database must be refused ("another ledger
writer"): one writer per ledger is what keeps the log from forking.

Every id sent is written to ``<workdir>/crash.ids`` (``ack``/``rej``/``unk`` lines), so
``ledger audit-load <workdir>/crash.ids --database URL`` can check the run again afterwards. A slow
machine makes the run slower, never failed: only correctness problems fail it.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import httpx
from sqlalchemy import text

from ledger import checkpoint, merkle
from ledger.audit import Record, audit, read_record
from ledger.ids import new_uuid
from ledger.process import descendants, wait_gone
from ledger.store.database import is_sqlite, make_engine, sqlite_path
from ledger.verify import verify

SERVE_TIMEOUT_S: Final = 60.0
"""How long ``ledger serve`` may take to answer /healthz after it is started."""
ORPHAN_WAIT_S: Final = 60.0
"""How long a killed server's committer may take to finish its last commit and exit."""
REQUEST_TIMEOUT_S: Final = 30.0
"""A request without an answer after this long is 'unanswered' and retried later."""
RESOLVE_TIMEOUT_S: Final = 180.0
"""How long the harness keeps retrying one unanswered batch after a restart."""
STOP_TIMEOUT_S: Final = 30.0
BATCH_MAX: Final = 20
DOOMED_SHARE: Final = 0.05
"""Share of items paid from an empty account: each must be refused, before and after a crash."""
SHOPS: Final = 3
RECORD_NAME: Final = "crash.ids"
WRITER_REFUSED: Final = "another ledger writer"

Log = Callable[[str], None]


class ServeError(RuntimeError):
    """``ledger serve`` exited or did not come up; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


READY_MARK: Final = "; HTTP workers: "
"""What ``ledger serve`` prints once the writer and all its HTTP workers are up."""


class ServeProcess:
    """A real ``ledger serve`` (``python -m ledger.cli serve``) on ``url``, in a subprocess.

    Its signing key, first central-bank key and logs (one file per start) live in ``tmp_dir``,
    so a restart uses the same database and the same key."""

    def __init__(
        self, url: str, tmp_dir: Path, port: int | None = None, workers: int | None = None
    ) -> None:
        self.url, self.tmp = url, tmp_dir
        self.workers = workers  # None: ledger serve's default
        self.port = port if port is not None else free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.admin_file = tmp_dir / "admin.key"
        self.key_file = tmp_dir / "ledger.key"
        self.proc: subprocess.Popen[str] | None = None
        self.log_path: Path | None = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "ledger.cli", "serve", "--database", self.url,
            "--key-file", str(self.key_file), "--port", str(self.port),
            "--admin-key-file", str(self.admin_file),
            *(["--workers", str(self.workers)] if self.workers else []),
        ]  # fmt: skip

    def start(self, timeout_s: float = SERVE_TIMEOUT_S) -> None:
        """Start and wait until /healthz answers 200 and every HTTP worker has started (the
        server says so: ``READY_MARK``); ``ServeError`` if it exits or times out."""
        self.log_path = self.tmp / f"serve-{time.monotonic_ns()}.log"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, text=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServeError(f"ledger serve exited ({self.proc.returncode}):\n{self.log()}")
            try:
                healthy = httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                healthy = False
            if healthy and READY_MARK in self.log():
                return
            time.sleep(0.1)
        self.proc.kill()
        self.proc.wait(10)
        raise ServeError(f"ledger serve did not come up in {timeout_s:.0f} s:\n{self.log()}")

    def log(self) -> str:
        """The current start's output (startup messages, errors)."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def kill(self, committer: bool = False) -> None:
        """SIGKILL the server (and, with ``committer``, every process it started, its committer
        among them, in the same instant); return once all are gone. A committer left alive
        finishes the commit in hand and exits when its pipe closes, releasing the writer lock
        the next start needs."""
        assert self.proc is not None
        children = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        if committer:
            for pid in children:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        wait_gone(children, ORPHAN_WAIT_S)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown: everything accepted is processed), then wait."""
        if self.proc is not None and self.proc.poll() is None:
            children = descendants(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            wait_gone(children, STOP_TIMEOUT_S)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_file.read_text().strip()}"}


@contextmanager
def serving(url: str, tmp_dir: Path, workers: int | None = None) -> Iterator[ServeProcess]:
    server = ServeProcess(url, tmp_dir, workers=workers)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class CrashReport:
    """What a crash run did and found. ``ok`` only when ``problems`` is empty."""

    database: str
    record_path: Path
    seed: int
    rounds: int = 0
    kills: int = 0
    committer_kills: int = 0
    acknowledged: int = 0
    rejected: int = 0
    unanswered_retried: int = 0
    """Ids whose answer never came, resolved by sending them again with the same ids."""
    unanswered_landed: int = 0
    """Of those, how many had been committed before the crash (the retry said ``replayed``)."""
    entries: int = 0
    full_verifies: int = 0
    second_writer_refused: bool = False
    problems: list[str] = field(default_factory=list)
    total_s: float = 0.0
    restart_s: list[float] = field(default_factory=list)
    verify_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        restart = (
            f"restarts {sum(self.restart_s) / len(self.restart_s):.1f} s mean, "
            f"{max(self.restart_s):.1f} s max; "
            if self.restart_s
            else ""
        )
        lines = [
            f"{'OK' if self.ok else 'FAIL'} crash test on {self.database}: {self.rounds} rounds, "
            f"{self.kills} SIGKILLs ({self.committer_kills} with the committer), "
            f"{self.acknowledged} transfers acknowledged, {self.rejected} rejected, "
            f"{self.unanswered_retried} unanswered and retried with the same ids "
            f"({self.unanswered_landed} had landed before the crash); {self.entries} journal "
            f"entries, {self.full_verifies} full verifies; "
            f"second writer {'refused' if self.second_writer_refused else 'NOT refused'}",
            f"  {restart}verify {self.verify_s:.1f} s; total {self.total_s:.1f} s; "
            f"seed {self.seed}",
        ]
        lines += [f"  problem: {p}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  ... and {len(self.problems) - 50} more problems")
        lines.append(f"  record: {self.record_path} (recheck: ledger audit-load {self.record_path}"
                     f" --database {self.database})")  # fmt: skip
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class _Item:
    id: str
    debit: str
    credit: str
    amount: int
    expect: str  # the only right answer: "ok", or "exceeds_credits" from the empty account

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "debit_account_id": self.debit,
            "credit_account_id": self.credit,
            "amount": self.amount,
            "code": 1,
        }


Batch = list[_Item]


@dataclass
class _Round:
    number: int
    record: Record = field(default_factory=Record)
    unanswered: list[Batch] = field(default_factory=list)
    last_answered: Batch | None = None
    seen: dict[int, dict[str, Any]] = field(default_factory=dict)  # client -> last checkpoint


class _Harness:
    def __init__(self, database_url: str, workdir: Path, clients: int, seed: int, log: Log) -> None:
        self.url, self.workdir, self.clients, self.log = database_url, workdir, clients, log
        self.rng = random.Random(seed)
        self.server = ServeProcess(database_url, workdir)
        self.engine = make_engine(database_url)
        self.lock = threading.RLock()
        self.report = CrashReport(database_url, workdir / RECORD_NAME, seed)
        self.out: TextIO = (workdir / RECORD_NAME).open("w")
        self.issuer, self.empty = new_uuid(), new_uuid()
        self.shops = [new_uuid() for _ in range(SHOPS)]
        self.debits: dict[str, int] = {}
        self.credits: dict[str, int] = {}
        self.public_key = b""
        self.origin = ""
        self.base_size = 0
        self.final_checkpoint: dict[str, Any] | None = None

    # -- bookkeeping ------------------------------------------------------------------------------

    def problem(self, message: str) -> None:
        with self.lock:
            self.report.problems.append(message)
        self.log(f"PROBLEM {message}")

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.base, headers=self.server.headers, timeout=REQUEST_TIMEOUT_S
        )

    def new_batch(self, rng: random.Random) -> Batch:
        batch = []
        for _ in range(rng.randint(1, BATCH_MAX)):
            shop = rng.choice(self.shops)
            if rng.random() < DOOMED_SHARE:
                batch.append(
                    _Item(new_uuid(), self.empty, shop, rng.randint(1, 100), "exceeds_credits")
                )
            else:
                amount = rng.randint(1, 100_000)
                batch.append(_Item(new_uuid(), self.issuer, shop, amount, "ok"))
        return batch

    def unanswered(self, rnd: _Round, batch: Batch) -> None:
        """No answer came: the outcome is unknown, so record ``unk`` and keep the batch to send
        again with the same ids after the restart."""
        with self.lock:
            for item in batch:
                rnd.record.add("unk", uuid.UUID(item.id).int)
                self.out.write(f"unk {item.id}\n")
            self.out.flush()
            rnd.unanswered.append(batch)

    def answered(
        self, rnd: _Round, batch: Batch, response: httpx.Response, retry: bool
    ) -> int | None:
        """Record the answer to every item and check it is the only right one. Returns the
        largest ``seq`` acknowledged (None if nothing was)."""
        try:
            results = response.json()["results"]
        except (ValueError, KeyError, TypeError):
            self.problem(f"round {rnd.number}: unreadable answer {response.text[:200]!r}")
            return None
        if len(results) != len(batch):
            self.problem(f"round {rnd.number}: {len(results)} results for {len(batch)} transfers")
            return None
        top: int | None = None
        with self.lock:
            for item, result in zip(batch, results, strict=True):
                got, tid = result.get("result"), uuid.UUID(item.id).int
                if got != item.expect or result.get("id") != item.id:
                    self.problem(
                        f"round {rnd.number}: transfer {item.id} answered {got!r} "
                        f"(id {result.get('id')}), expected {item.expect!r}"
                    )
                outcome = "ack" if got == "ok" else "rej"
                first = rnd.record.outcome.get(tid) not in ("ack", "rej")
                if first:
                    if outcome == "ack":
                        self.report.acknowledged += 1
                        self.debits[item.debit] = self.debits.get(item.debit, 0) + item.amount
                        self.credits[item.credit] = self.credits.get(item.credit, 0) + item.amount
                        seq = result.get("seq")
                        top = seq if top is None or (seq is not None and seq > top) else top
                    else:
                        self.report.rejected += 1
                    if retry:
                        self.report.unanswered_retried += 1
                        self.report.unanswered_landed += bool(result.get("replayed"))
                rnd.record.add(outcome, tid)
                self.out.write(f"{outcome} {item.id}\n")
            self.out.flush()
            rnd.last_answered = batch
        return top

    # -- phases -----------------------------------------------------------------------------------

    def setup(self) -> None:
        with self.http() as http:
            accounts = [{"id": self.issuer, "code": 1}]
            accounts += [{"id": s, "code": 3} for s in self.shops]
            accounts.append(
                {"id": self.empty, "code": 2, "flags": ["debits_must_not_exceed_credits"]}
            )
            response = http.post("/v1/accounts", json={"accounts": accounts})
            response.raise_for_status()
            if {r["result"] for r in response.json()["results"]} != {"ok"}:
                raise ServeError(f"could not create the accounts: {response.text}")
            key = http.get("/v1/public_key").json()
            self.public_key, self.origin = base64.b64decode(key["public_key"]), key["origin"]
            latest = http.get("/v1/checkpoints/latest").json()
            self.base_size = int(latest["tree_size"])
            self.final_checkpoint = latest

    def client(self, index: int, rnd: _Round, stop: threading.Event, seed: int) -> None:
        """One client: pay in batches until told to stop or the server vanishes."""
        rng = random.Random(seed)
        with self.http() as http:
            while not stop.is_set():
                batch = self.new_batch(rng)
                try:
                    response = http.post(
                        "/v1/transfers", json={"transfers": [i.json() for i in batch]}
                    )
                except httpx.TransportError:
                    self.unanswered(rnd, batch)  # reset, refused or timed out: outcome unknown
                    return
                if response.status_code >= 500 or response.status_code == 429:
                    self.unanswered(rnd, batch)  # overloaded or failed commit: retried later
                    time.sleep(rng.uniform(0.05, 0.2))
                    continue
                if response.status_code != 200:
                    self.unanswered(rnd, batch)
                    self.problem(f"round {rnd.number}: HTTP {response.status_code} {response.text}")
                    return
                top = self.answered(rnd, batch, response, retry=False)
                try:
                    latest = http.get("/v1/checkpoints/latest")
                except httpx.TransportError:
                    return
                if latest.status_code != 200:
                    continue
                seen = latest.json()
                if top is not None and int(seen["tree_size"]) <= top:
                    self.problem(
                        f"round {rnd.number}: entry {top} was acknowledged but the next "
                        f"checkpoint read has size {seen['tree_size']}"
                    )
                rnd.seen[index] = seen

    def restart(self, kill_number: int) -> None:
        """Start again on the same database and key. A start refused because the killed
        server's committer still holds the writer lock is a slow machine, not a failure: wait
        and try again (the lock wait inside ``ledger serve`` is only a few seconds)."""
        began = time.monotonic()
        for attempt in range(3):
            try:
                self.server.start()
                break
            except ServeError as exc:
                if WRITER_REFUSED not in " ".join(str(exc).split()) or attempt == 2:
                    raise ServeError(f"no restart after kill {kill_number}: {exc}") from None
                time.sleep(5)
        self.report.restart_s.append(time.monotonic() - began)

    def check_second_writer(self) -> None:
        """A second ``ledger serve`` on the same database must be refused at start."""
        second = ServeProcess(self.url, self.workdir, port=free_port())
        proc = subprocess.Popen(
            second.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            output, _ = proc.communicate(timeout=SERVE_TIMEOUT_S + 30)
        except subprocess.TimeoutExpired:
            children = descendants(proc.pid)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            wait_gone(children, ORPHAN_WAIT_S)
            self.problem("a second ledger serve on the same database kept running")
            return
        if proc.returncode != 0 and WRITER_REFUSED in " ".join(output.split()):
            self.report.second_writer_refused = True
        else:
            self.problem(
                f"a second ledger serve was not refused as {WRITER_REFUSED!r} "
                f"(exit {proc.returncode}): {output[-500:]}"
            )

    def resolve(self, rnd: _Round) -> None:
        """Send every unanswered batch again, same ids, until it is answered: never guess."""
        with self.http() as http:
            for batch in rnd.unanswered:
                deadline, delay = time.monotonic() + RESOLVE_TIMEOUT_S, 0.05
                while True:
                    try:
                        response = http.post(
                            "/v1/transfers", json={"transfers": [i.json() for i in batch]}
                        )
                        if response.status_code == 200:
                            self.answered(rnd, batch, response, retry=True)
                            break
                        if response.status_code < 500 and response.status_code != 429:
                            self.problem(
                                f"round {rnd.number}: retry got HTTP {response.status_code} "
                                f"{response.text[:200]}"
                            )
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() >= deadline:
                        self.problem(
                            f"round {rnd.number}: no answer for a batch of {len(batch)} "
                            f"after retrying for {RESOLVE_TIMEOUT_S:.0f} s"
                        )
                        break
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)

    def check(self, rnd: _Round, full_verify: bool) -> int:
        """Everything that must hold after a crash and recovery; returns the tree size."""
        where = f"round {rnd.number}"
        # Nothing lost, nothing twice: this round's ids against the journal.
        audited = audit(self.engine, rnd.record, run_verify=False)
        for p in audited.problems:
            self.problem(f"{where}: {p}")
        if audited.problem_count > len(audited.problems):
            self.problem(f"{where}: ... and {audited.problem_count - len(audited.problems)} more")
        if audited.unanswered:
            self.problem(f"{where}: {audited.unanswered} ids still without an answer")
        with self.http() as http:
            key = http.get("/v1/public_key").json()
            if (
                base64.b64decode(key["public_key"]) != self.public_key
                or key["origin"] != self.origin
            ):
                self.problem(f"{where}: the ledger's key or origin changed across the restart")
            latest = http.get("/v1/checkpoints/latest").json()
            size = self.check_signed(where, latest)
            # The same Merkle log continued: everything seen before is a prefix of it.
            earlier = list(rnd.seen.values())
            earlier += [self.final_checkpoint] if self.final_checkpoint else []
            for old in earlier:
                self.check_prefix(http, where, old, latest)
            self.final_checkpoint = latest
            expected = self.base_size + self.report.acknowledged
            if size != expected:
                self.problem(
                    f"{where}: the log holds {size} entries, expected {expected} "
                    f"({self.base_size} before the payments + {self.report.acknowledged} "
                    "acknowledged)"
                )
            # Balances equal what was acknowledged.
            for account in [self.issuer, self.empty, *self.shops]:
                balances = http.get(f"/v1/accounts/{account}").json()["balances"]
                want = (self.debits.get(account, 0), self.credits.get(account, 0))
                got = (balances["debits_posted"], balances["credits_posted"])
                if got != want:
                    self.problem(
                        f"{where}: account {account} has posted debits/credits {got}, "
                        f"acknowledged {want}"
                    )
            # Applied once: a resolved batch sent once more is all replays.
            again = rnd.unanswered[0] if rnd.unanswered else rnd.last_answered
            if again is not None:
                response = http.post("/v1/transfers", json={"transfers": [i.json() for i in again]})
                results = response.json()["results"]
                if not all(r["replayed"] for r in results) or [r["result"] for r in results] != [
                    i.expect for i in again
                ]:
                    self.problem(f"{where}: a resolved batch sent again was not all replays")
        if full_verify:
            self.full_verify(where, size)
        return size

    def check_signed(self, where: str, seen: dict[str, Any]) -> int:
        """A checkpoint as served: its note carries a valid signature by the pinned key."""
        try:
            signed = checkpoint.parse_note(seen["note"], self.public_key)
        except checkpoint.CheckpointError as exc:
            self.problem(f"{where}: checkpoint {seen.get('tree_size')}: {exc}")
            return int(seen["tree_size"])
        if not signed.verify(self.public_key) or signed.size != seen["tree_size"]:
            self.problem(f"{where}: checkpoint {seen['tree_size']} is not signed by the ledger")
        return signed.size

    def check_prefix(
        self, http: httpx.Client, where: str, old: dict[str, Any], new: dict[str, Any]
    ) -> None:
        self.check_signed(where, old)
        first, second = int(old["tree_size"]), int(new["tree_size"])
        old_root, new_root = base64.b64decode(old["root_hash"]), base64.b64decode(new["root_hash"])
        if first > second:
            self.problem(f"{where}: the log shrank from {first} to {second} entries")
            return
        again = http.get(f"/v1/checkpoints/{first}")
        if again.status_code != 200 or base64.b64decode(again.json()["root_hash"]) != old_root:
            self.problem(f"{where}: the checkpoint at size {first} changed or vanished")
        if first == second:
            ok = old_root == new_root
        else:
            proof = http.get("/v1/proofs/consistency", params={"first": first, "second": second})
            ok = merkle.verify_consistency(
                first, second, old_root, new_root,
                [base64.b64decode(h) for h in proof.json()["proof"]],
            )  # fmt: skip
        if not ok:
            self.problem(f"{where}: checkpoint {first} is not a prefix of checkpoint {second}")

    def full_verify(self, where: str, size: int) -> None:
        """Balances equal an independent replay of the journal; every checkpoint verifies."""
        began = time.monotonic()
        report = verify(self.engine)
        self.report.verify_s += time.monotonic() - began
        self.report.full_verifies += 1
        self.report.entries = report.entries
        if not report.ok:
            self.problem(f"{where}: ledger verify: {report.problem}")
        elif report.entries != size:
            self.problem(f"{where}: ledger verify read {report.entries} entries, log size {size}")

    def round(self, number: int, rounds: int, min_s: float, max_s: float, verify: bool) -> None:
        rnd = _Round(number)
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=self.client, args=(i, rnd, stop, self.rng.getrandbits(64)), daemon=True
            )
            for i in range(self.clients)
        ]
        for t in threads:
            t.start()
        delay = self.rng.uniform(min_s, max_s)
        with_committer = self.rng.random() < 0.5
        time.sleep(delay)
        self.server.kill(committer=with_committer)
        stop.set()
        self.report.kills += 1
        self.report.committer_kills += with_committer
        for t in threads:
            t.join(REQUEST_TIMEOUT_S + 30)
        self.restart(number)
        if not self.report.second_writer_refused:
            self.check_second_writer()
        before = self.report.unanswered_retried
        self.resolve(rnd)
        size = self.check(rnd, verify)
        self.report.rounds += 1
        self.log(
            f"round {number}/{rounds}: killed {'server+committer' if with_committer else 'server'}"
            f" after {delay:.2f} s; {self.report.acknowledged} acknowledged so far, "
            f"{self.report.unanswered_retried - before} unanswered retried "
            f"({self.report.unanswered_retried} in all), tree size {size}, "
            f"restart {self.report.restart_s[-1]:.1f} s{', verified' if verify else ''}"
        )

    def finish(self) -> None:
        """Stop cleanly, then audit the whole record file and verify the whole ledger."""
        self.server.stop()
        self.out.close()
        began = time.monotonic()
        audited = audit(self.engine, read_record([self.report.record_path]), run_verify=True)
        self.report.verify_s += time.monotonic() - began
        self.report.full_verifies += 1
        for p in audited.problems:
            self.problem(f"final audit: {p}")
        if audited.verify is not None:
            self.report.entries = audited.verify.entries
            if not audited.verify.ok:
                self.problem(f"final ledger verify: {audited.verify.problem}")
            expected = self.base_size + self.report.acknowledged
            if audited.verify.entries != expected:
                self.problem(f"final: {audited.verify.entries} entries, expected {expected}")


def _fresh(database_url: str) -> bool:
    """True when the database holds no ledger yet (the harness writes test payments into it)."""
    if is_sqlite(database_url) and not sqlite_path(database_url).exists():
        return True
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return not conn.execute(text("SELECT COUNT(*) FROM journal_entries")).scalar()
    except Exception:
        return True  # no journal table: nothing there yet
    finally:
        engine.dispose()


def run(
    database_url: str,
    workdir: Path,
    rounds: int,
    clients: int = 4,
    seed: int | None = None,
    log: Log = print,
    min_s: float = 0.3,
    max_s: float = 2.0,
    verify_every: int = 1,
) -> CrashReport:
    """Run ``rounds`` kill/restart rounds on a fresh ledger at ``database_url``.

    ``workdir`` gets the ledger's key, the server logs and the record ``crash.ids``. Each round
    pays from ``clients`` threads for a random time in [``min_s``, ``max_s``), SIGKILLs the
    server, restarts it, resolves every unanswered batch by retrying it, and checks (see the
    module docstring); the full ``ledger verify`` replay runs every ``verify_every`` rounds and at
    the end. ``seed`` fixes the delays, kill modes, batch sizes and amounts (not the timing of
    the machine); without one a seed is drawn and reported, so a failing run can be re-run."""
    if rounds < 1 or clients < 1 or verify_every < 1 or not 0 < min_s <= max_s:
        raise ValueError("rounds, clients and verify_every must be >= 1, 0 < min_s <= max_s")
    workdir.mkdir(parents=True, exist_ok=True)
    if not _fresh(database_url):
        raise ValueError(f"{database_url} already holds a ledger: the crash test needs a fresh one")
    seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    began = time.monotonic()
    harness = _Harness(database_url, workdir, clients, seed, log)
    log(f"crash test on {database_url}: {rounds} rounds, {clients} clients, seed {seed}, "
        f"work directory {workdir}")  # fmt: skip
    try:
        harness.server.start()
        harness.setup()
        for number in range(1, rounds + 1):
            harness.round(
                number, rounds, min_s, max_s, number % verify_every == 0 or number == rounds
            )
            if harness.report.problems:
                break  # the first round that finds something is the one to look at
    except (ServeError, httpx.HTTPError) as exc:
        harness.problem(f"{type(exc).__name__}: {exc}")
    finally:
        try:
            harness.finish()
        except Exception as exc:  # a finding to report, not a reason to lose the report
            harness.problem(f"final audit could not run: {type(exc).__name__}: {exc}")
        finally:
            harness.engine.dispose()
    harness.report.total_s = time.monotonic() - began
    return harness.report


def cli_main(
    database: str | None,
    directory: Path | None,
    rounds: int,
    clients: int = 4,
    seed: int | None = None,
    verify_every: int = 1,
) -> int:
    """``ledger crash-test``: progress on stderr, the summary on stdout; exit 0 when OK, 1 when
    a problem was found, 2 when the run could not start (e.g. the database is not fresh).
    Without ``--database`` the ledger is SQLite in the work directory (never ./ledger.db)."""
    workdir = directory or Path(tempfile.mkdtemp(prefix="ledger-crash-"))
    url = database or f"sqlite:///{workdir.resolve() / 'ledger.db'}"
    try:
        report = run(
            url,
            workdir,
            rounds,
            clients=clients,
            seed=seed,
            log=lambda line: print(line, file=sys.stderr, flush=True),
            verify_every=verify_every,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.ok else 1
