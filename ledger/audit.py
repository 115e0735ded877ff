"""``ledger audit-load``: after a load or crash run, check that nothing was lost or counted twice.

Load clients (the locust profiles, the crash harness) write a *record*: one line per transfer id
they sent, with what they saw::

    ack 0190f0a2-7c1e-7b3a-9d2e-1f2a3b4c5d6e      # the server answered ok (or replayed ok)
    rej 0190f0a2-7c1e-7b3a-9d2e-1f2a3b4c5d6f      # the server answered with a rejection code
    unk 0190f0a2-7c1e-7b3a-9d2e-1f2a3b4c5d70      # sent, but no answer came (timeout, reset, 5xx)

A record is a file or a directory of ``*.ids`` files (one per load process). An id may appear
several times (a retry after ``unk``); what counts is the strongest answer seen: ``ack`` over
``rej`` over ``unk``. An id answered both ``ack`` and ``rej`` is itself a finding.

The audit then checks, against the journal:

* every acknowledged id is in the journal exactly once, as a transfer (nothing lost);
* every rejected id is not in it (a refusal never turned into a payment);
* every id whose answer never came is in it at most once (nothing applied twice);
* ``ledger verify`` passes over the whole ledger (Merkle log, signatures, balances, zero-sum).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from sqlalchemy import Engine, bindparam, text

from ledger.entry import KIND_TRANSFER
from ledger.verify import Report, verify

OUTCOMES: Final = ("unk", "rej", "ack")  # weakest first
CHUNK: Final = 500
PROBLEMS_SHOWN: Final = 20


class RecordError(ValueError):
    """A record line that is not ``<ack|rej|unk> <uuid>``."""


@dataclass
class Record:
    outcome: dict[int, str] = field(default_factory=dict)
    contradictions: list[int] = field(default_factory=list)
    lines: int = 0

    def add(self, outcome: str, transfer_id: int) -> None:
        self.lines += 1
        before = self.outcome.get(transfer_id)
        if {before, outcome} == {"ack", "rej"}:
            self.contradictions.append(transfer_id)
        if before is None or OUTCOMES.index(outcome) > OUTCOMES.index(before):
            self.outcome[transfer_id] = outcome

    def ids(self, outcome: str) -> list[int]:
        return [i for i, o in self.outcome.items() if o == outcome]


def record_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.ids")) if path.is_dir() else [path]


def read_record(paths: Iterable[Path]) -> Record:
    record = Record()
    for path in paths:
        for files in record_files(path):
            with files.open() as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    parts = line.split()
                    try:
                        if len(parts) != 2 or parts[0] not in OUTCOMES:
                            raise ValueError
                        record.add(parts[0], uuid.UUID(parts[1]).int)
                    except ValueError:
                        raise RecordError(
                            f"{files}:{number}: expected '<ack|rej|unk> <uuid>', got {line!r}"
                        ) from None
    return record


@dataclass
class AuditReport:
    acknowledged: int = 0
    rejected: int = 0
    unanswered: int = 0
    unanswered_landed: int = 0
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    verify: Report | None = None

    @property
    def ok(self) -> bool:
        return self.problem_count == 0 and (self.verify is None or self.verify.ok)

    def problem(self, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < PROBLEMS_SHOWN:
            self.problems.append(message)

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "acknowledged": self.acknowledged,
            "rejected": self.rejected,
            "unanswered": self.unanswered,
            "unanswered_landed": self.unanswered_landed,
            "problem_count": self.problem_count,
            "problems": self.problems,
            "verify": None if self.verify is None else (self.verify.problem or "ok"),
            "journal_entries": None if self.verify is None else self.verify.entries,
        }

    def summary(self) -> str:
        lines = [
            f"{'OK' if self.ok else 'FAIL'} audit of {self.acknowledged} acknowledged, "
            f"{self.rejected} rejected and {self.unanswered} unanswered transfer ids "
            f"({self.unanswered_landed} of the unanswered landed, each once)",
        ]
        lines += [f"  {p}" for p in self.problems]
        if self.problem_count > len(self.problems):
            lines.append(f"  ... and {self.problem_count - len(self.problems)} more")
        if self.verify is not None:
            v = self.verify
            lines.append(
                f"  ledger verify: {'ok' if v.ok else 'FAIL ' + str(v.problem)} "
                f"({v.entries} entries, {v.checkpoints} checkpoints)"
            )
        return "\n".join(lines)


def journal_counts(engine: Engine, ids: list[int]) -> dict[int, int]:
    """How many transfer entries the journal holds for each id (absent: none)."""
    query = text(
        "SELECT ref_id, COUNT(*) FROM journal_entries WHERE kind = :kind AND ref_id IN :ids "
        "GROUP BY ref_id"
    ).bindparams(bindparam("ids", expanding=True))
    counts: dict[int, int] = {}
    with engine.connect() as conn:
        for start in range(0, len(ids), CHUNK):
            chunk = [i.to_bytes(16, "big") for i in ids[start : start + CHUNK]]
            for ref, n in conn.execute(query, {"kind": KIND_TRANSFER, "ids": chunk}):
                counts[int.from_bytes(bytes(ref), "big")] = int(n)
    return counts


def audit(
    engine: Engine,
    record: Record,
    progress: Callable[[int, int], None] | None = None,
    run_verify: bool = True,
) -> AuditReport:
    report = AuditReport()
    acked, rejected, unknown = record.ids("ack"), record.ids("rej"), record.ids("unk")
    report.acknowledged, report.rejected, report.unanswered = (
        len(acked),
        len(rejected),
        len(unknown),
    )
    for tid in record.contradictions:
        report.problem(f"{uuid.UUID(int=tid)} was answered both ok and rejected")
    counts = journal_counts(engine, acked + rejected + unknown)
    for tid in acked:
        n = counts.get(tid, 0)
        if n != 1:
            report.problem(f"acknowledged {uuid.UUID(int=tid)} is in the journal {n} times")
    for tid in rejected:
        if counts.get(tid, 0):
            report.problem(f"rejected {uuid.UUID(int=tid)} is in the journal as a transfer")
    for tid in unknown:
        n = counts.get(tid, 0)
        report.unanswered_landed += n == 1
        if n > 1:
            report.problem(f"unanswered {uuid.UUID(int=tid)} is in the journal {n} times")
    if run_verify:
        report.verify = verify(engine, progress)
    return report
