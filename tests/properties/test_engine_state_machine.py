"""Random batches never break the ledger's invariants, and replaying them gives the same bytes.

A hypothesis state machine drives the engine with random batches: plain, pending (with and
without timeouts), post (full and partial), void, linked chains, replays and duplicate ids, unknown
accounts, time jumps that expire pending transfers. After every batch it checks:

* zero-sum: total debits == total credits, posted and pending;
* no account with a limit flag ever breaks it, and no pending balance goes negative;
* the entries the batch produced, replayed by the independent checker in ``ledger.verify``, give
  exactly the engine's balances.

At the end, the whole history is replayed on a fresh engine: the same results, the same entry
bytes, the same Merkle roots and signatures (determinism).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from nacl.signing import SigningKey

from ledger import entry, merkle
from ledger.domain import Account, AccountFlags, Transfer, TransferFlags
from ledger.engine import OP_CREATE_ACCOUNTS, OP_CREATE_TRANSFERS, Engine, State
from ledger.journal import Journal, MerkleLog
from ledger.verify import _Replay

CNY = 156
KEY = SigningKey(b"\x07" * 32)
DR_LIMIT = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
CR_LIMIT = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
ACCOUNTS = [  # (id, flags): an issuer, five wallets that may not overdraw, one sink
    (1, 0),
    *((i, DR_LIMIT) for i in range(2, 7)),
    (7, CR_LIMIT),
]
L, P = int(TransferFlags.LINKED), int(TransferFlags.PENDING)
POST, VOID = int(TransferFlags.POST_PENDING), int(TransferFlags.VOID_PENDING)

Spec = tuple[int, int, int, int, int, int, int]  # id, dr, cr, amount, flags, pending_id, timeout

ids = st.integers(1, 2**40)
account_ids = st.sampled_from([a for a, _ in ACCOUNTS] + [99])  # 99 does not exist
amounts = st.integers(0, 400)
linked = st.sampled_from([0, 0, 0, 0, 0, L])


@st.composite
def spec(draw: st.DrawFn, live_pending: list[int], used: list[int]) -> Spec:
    """One transfer: plain, pending, or a post/void that usually names a live pending one.
    One id in four is reused (a replay, or the same id with other fields)."""
    kind = draw(st.sampled_from(["plain", "plain", "pending", "post", "void"]))
    link = draw(linked)
    tid = draw(st.one_of(ids, ids, ids, st.sampled_from(used))) if used else draw(ids)
    if kind in ("post", "void"):
        known = st.sampled_from(live_pending) if live_pending else ids
        pending_id = draw(st.one_of(known, known, known, ids))
        flags = (POST if kind == "post" else VOID) | link
        return (tid, 0, 0, draw(st.sampled_from([0, 0, 50, 150, 350, 500])), flags, pending_id, 0)
    dr, cr = draw(account_ids), draw(account_ids)
    if kind == "pending":
        timeout = draw(st.sampled_from([0, 1, 3]))
        return (tid, dr, cr, draw(st.integers(1, 400)), P | link, 0, timeout)
    return (tid, dr, cr, draw(amounts), link, 0, 0)


def build(s: Spec) -> Transfer:
    tid, dr, cr, amount, flags, pending_id, timeout = s
    code = 0 if flags & (POST | VOID) else 1
    ledger = 0 if flags & (POST | VOID) else CNY
    return Transfer(tid, dr, cr, amount, ledger, code, flags, pending_id, timeout)


def run_history(history: list[tuple[list[Spec], int]]) -> list[Any]:
    """Replay a history on a fresh engine; return everything observable, as plain values."""
    engine = Engine(State())
    journal = Journal(MerkleLog(), KEY, "test/ledger")
    observed: list[Any] = []
    accounts = [Account(a, CNY, 1, flags) for a, flags in ACCOUNTS]
    out = engine.execute([(OP_CREATE_ACCOUNTS, accounts, None)], 1)
    journal.prepare(out)
    for specs, ts in history:
        out = engine.execute([(OP_CREATE_TRANSFERS, [build(s) for s in specs], None)], ts)
        rows, _ = journal.prepare(out)
        observed.append(
            (
                [int(c) for c in out.results[0].codes],
                sorted(out.results[0].replayed),
                [r[7] for r in rows.entries],
                rows.checkpoint and (rows.checkpoint.root, rows.checkpoint.signature),
            )
        )
    return observed


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(State())
        self.journal = Journal(MerkleLog(), KEY, "test/ledger")
        self.replay = _Replay()
        self.history: list[tuple[list[Spec], int]] = []
        self.observed: list[Any] = []
        self.used: list[int] = []
        self.now = 1

    @initialize()
    def open_accounts(self) -> None:
        accounts = [Account(a, CNY, 1, flags) for a, flags in ACCOUNTS]
        out = self.engine.execute([(OP_CREATE_ACCOUNTS, accounts, None)], self.now)
        self._check_entries(out, *self.journal.prepare(out))
        # the issuer funds every wallet so that money moves
        self._batch([(1000 + a, 1, a, 5_000, 0, 0, 0) for a, f in ACCOUNTS if f == DR_LIMIT], 1)

    @rule(data=st.data(), advance_s=st.sampled_from([0, 0, 1, 2, 5]))
    def batch(self, data: st.DataObject, advance_s: int) -> None:
        live = sorted(self.engine.state.live_pending)
        specs = data.draw(st.lists(spec(live, self.used), min_size=1, max_size=12))
        self._batch(specs, advance_s)

    def _batch(self, specs: list[Spec], advance_s: int) -> None:
        self.now = max(self.now + advance_s * 1_000_000_000, self.engine.state.last_timestamp + 1)
        out = self.engine.execute(
            [(OP_CREATE_TRANSFERS, [build(s) for s in specs], None)], self.now
        )
        rows, appended = self.journal.prepare(out)
        self.history.append((specs, self.now))
        self.used.extend(s[0] for s in specs)
        self.observed.append(
            (
                [int(c) for c in out.results[0].codes],
                sorted(out.results[0].replayed),
                [r[7] for r in rows.entries],
                rows.checkpoint and (rows.checkpoint.root, rows.checkpoint.signature),
            )
        )
        self._check_entries(out, rows, appended)

    def _check_entries(self, out: Any, rows: Any, appended: merkle.AppendedLeaves) -> None:
        """The independent checker, fed only the entry bytes, agrees with the engine; every
        entry's proof from the journal's memory verifies against the batch's signed root."""
        for seq, *_rest in rows.entries:
            body = _rest[6]
            self.replay.apply(seq, entry.decode(body))
            proof = appended.inclusion_proof(seq)
            assert merkle.verify_inclusion(body, seq, appended.size, proof, rows.checkpoint.root)
        for a in self.engine.state.accounts.values():
            assert tuple(self.replay.accounts[a.id].b) == a.balances(), a

    @invariant()
    def zero_sum(self) -> None:
        totals = [0, 0, 0, 0]
        for a in self.engine.state.accounts.values():
            for i, v in enumerate(a.balances()):
                totals[i] += v
        assert totals[0] == totals[2] and totals[1] == totals[3], totals

    @invariant()
    def limits_hold(self) -> None:
        for a in self.engine.state.accounts.values():
            dp, dpo, cp, cpo = a.balances()
            assert dp >= 0 and cp >= 0
            if a.flags & DR_LIMIT:
                assert dp + dpo <= cpo, a
            if a.flags & CR_LIMIT:
                assert cp + cpo <= dpo, a

    def teardown(self) -> None:
        assert run_history(self.history) == self.observed, "replay from scratch differs"


LedgerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerMachine = LedgerMachine.TestCase
