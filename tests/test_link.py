"""The link between ``ledger serve``'s HTTP workers and its writer, on real SQLite and PostgreSQL:
a ``RemoteLedger`` over a real Unix socket to a ``LinkServer`` around a real ``LedgerService``.

The whole HTTP API also runs over the link in ``tests/test_api.py`` and ``tests/test_wallets.py``
(``app_mode`` "worker"); these tests pin the link's own promises."""

from __future__ import annotations

import asyncio
import io
import logging
import pickle
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from ledger import domain, link, signing
from ledger.api.views import receipt
from ledger.api.wallet_auth import KEY_ROTATED, WriterAdmission
from ledger.domain import Account, AccountFlags, OpenWallet, Result, Transfer, UpdateWallet, Wallet
from ledger.engine import (
    OP_CREATE_ACCOUNTS,
    OP_CREATE_TRANSFERS,
    OP_UPDATE_WALLETS,
    OpResult,
)
from ledger.ids import new_id
from ledger.link import LinkServer, RemoteLedger
from ledger.sequencer import LedgerUnavailable, Overloaded
from ledger.server import open_wallets
from ledger.service import LedgerService
from ledger.store.queries import Reader
from ledger.wallets.service import SignedPayment
from wallet_sdk.receipts import check_receipt

CNY = 156
DR_LIMIT = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)


@dataclass
class Linked:
    service: LedgerService
    server: LinkServer
    remote: RemoteLedger
    lost: threading.Event


@pytest.fixture
def linked(database_url: str, key_file: Path) -> Iterator[Linked]:
    service = LedgerService.open(database_url, key_file, "test.example/link")
    directory = Path(tempfile.mkdtemp(prefix="lk-"))
    server = link.link_server(directory / "link.sock", service, WriterAdmission(service).check)
    lost = threading.Event()
    remote = RemoteLedger(directory / "link.sock", service.db, on_lost=lost.set)
    try:
        yield Linked(service, server, remote, lost)
    finally:
        remote.close()
        server.close()
        service.close()
        shutil.rmtree(directory, ignore_errors=True)


def accounts() -> tuple[int, int, int]:
    issuer, alice, bob = new_id(), new_id(), new_id()
    return issuer, alice, bob


def wallet_account(wallet_id: int, key: SigningKey) -> OpenWallet:
    account = Account(wallet_id, CNY, 20, DR_LIMIT, "", "op_a")
    wallet = Wallet(wallet_id, "op_a", "personal", 1, bytes(key.verify_key), 0, 0)
    return OpenWallet(account, wallet)


# -- the frames ---------------------------------------------------------------------------------


def roundtrip(message: object) -> object:
    frame = link.encode(message)
    (size,) = struct.unpack(">I", frame[:4])
    assert size == len(frame) - 4
    return link.read_frame(io.BufferedReader(io.BytesIO(frame)))  # type: ignore[arg-type]


def deep(obj: object) -> object:
    """A domain object as plain data, all the way down, to compare two copies."""
    if type(obj) in link._INDEX:
        names = getattr(type(obj), "__mypyc_attrs__", ()) or vars(type(obj))["__slots__"]
        return (type(obj).__name__, {n: deep(getattr(obj, n)) for n in names})
    if isinstance(obj, list | tuple):
        return [deep(v) for v in obj]
    if isinstance(obj, dict):
        return {k: deep(v) for k, v in obj.items()}
    return obj


def test_every_domain_class_crosses_the_link_whole() -> None:
    t = Transfer(new_id(), new_id(), new_id(), 1234, CNY, 7, 3, new_id(), 60, b'{"a":"b"}', b"s")
    t.seq, t.timestamp, t.detail = 41, 17, {"limit": "daily", "allowed_fen": 5}
    t.attachments = [domain.Attachment("rows", ("a", "b"), (1, "x"), "rejected")]
    key = bytes(32)
    opened = OpenWallet(Account(new_id(), CNY, 20, DR_LIMIT, "o", "op"), Wallet(
        new_id(), "op", "merchant", 2, key, new_id(), new_id(), limits=domain.LimitSet(1, 2, 3, 4)
    ))  # fmt: skip
    opened.account.credits_posted = 99
    items = [
        t,
        opened,
        domain.CloseAccount(new_id()),
        UpdateWallet(new_id(), 3, key, 1, new_id(), "why", new_id()),
        domain.Disbursement(new_id(), new_id(), new_id(), new_id(), 500, 5, 1000, {"t": 1}),
        domain.AuditRecord("kyc_revealed", {"who": "me"}),
        domain.ActivateLimits("v2", {1: domain.LimitSet(0, 0, 0, 0)}),
        domain.CancelTransferId(new_id(), "expired"),
    ]
    back = roundtrip((1, link.SUBMIT, (3, items, "op", True)))
    request_id, kind, (op, got, operator, receipts) = back  # type: ignore[misc]
    assert (request_id, kind, op, operator, receipts) == (1, link.SUBMIT, 3, "op", True)
    assert deep(got) == deep(items)
    assert [type(x) for x in got] == [type(x) for x in items]


def test_a_class_whose_constructor_takes_other_than_its_attributes_is_refused() -> None:
    class Odd:
        __slots__ = ("a", "seq")

        def __init__(self, b: int) -> None:
            self.a, self.seq = b, -1

    with pytest.raises(TypeError, match=r"Odd\(\) takes \['b'\]"):
        link._wire_order(Odd)


def test_answers_carry_what_the_engine_changed_and_nothing_else() -> None:
    t = Transfer(new_id(), new_id(), new_id(), 1, CNY, 1, authorization=b"s" * 80)
    t.attachments = [domain.Attachment("rows", ("a",), (1,))]
    before = link.snapshot(t)
    t.seq, t.timestamp = 7, 99
    changed = link.changes(t, before)
    names = link._ATTRS[link._INDEX[Transfer]]
    assert {names[i]: v for i, v in changed} == {"seq": 7, "timestamp": 99}
    mine = Transfer(t.id, t.debit_account_id, t.credit_account_id, 1, CNY, 1)
    mine.attachments = t.attachments
    link.apply_changes(mine, changed)
    assert (mine.seq, mine.timestamp) == (7, 99) and mine.attachments is t.attachments


def test_nested_changes_keep_the_callers_objects() -> None:
    key = SigningKey.generate()
    theirs = wallet_account(new_id(), key)
    before = link.snapshot(theirs)
    theirs.account.seq, theirs.account.timestamp = 12, 34  # changed in place, as the engine does
    mine = wallet_account(theirs.id, key)
    inner = mine.account
    link.apply_changes(mine, link.changes(theirs, before))
    assert mine.account is inner and (inner.seq, inner.timestamp) == (12, 34)


def test_a_frame_over_the_limit_drops_the_link(linked: Linked) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as rogue:
        rogue.connect(str(linked.server.path))
        rogue.sendall(struct.pack(">I", link.FRAME_MAX_BYTES + 1))
        rogue.settimeout(10)
        assert rogue.recv(1) == b""  # closed by the writer, nothing allocated
    assert linked.remote.committed_size() == 0  # the writer and the other worker go on


# -- submits ------------------------------------------------------------------------------------


def test_results_replays_and_what_the_engine_wrote_come_back(linked: Linked) -> None:
    remote = linked.remote
    issuer, alice, bob = accounts()
    made = [Account(issuer, CNY, 1), Account(alice, CNY, 2, DR_LIMIT), Account(bob, CNY, 2)]
    assert remote.submit(OP_CREATE_ACCOUNTS, made).result().codes == [0, 0, 0]
    assert [a.seq for a in made] == [0, 1, 2] and all(a.timestamp > 0 for a in made)

    first = [
        Transfer(new_id(), issuer, alice, 500, CNY, 1),
        Transfer(new_id(), alice, bob, 900, CNY, 1),
    ]
    result = remote.submit(OP_CREATE_TRANSFERS, first).result()
    assert result.codes == [0, Result.EXCEEDS_CREDITS]
    assert first[0].seq == 3 and first[1].seq == -1 and first[1].result == Result.EXCEEDS_CREDITS
    assert result.tree_size == linked.service.committed_size() == 4

    again = [Transfer(first[0].id, issuer, alice, 500, CNY, 1)]
    replay = remote.submit(OP_CREATE_TRANSFERS, again).result()
    assert replay.codes == [0] and replay.replayed == {0} and again[0].seq == 3
    other = [Transfer(first[0].id, issuer, alice, 501, CNY, 1)]
    assert remote.submit(OP_CREATE_TRANSFERS, other).result().codes == [
        Result.EXISTS_WITH_DIFFERENT_AMOUNT
    ]
    assert remote.account(alice).credits_posted == 500  # type: ignore[union-attr]
    assert remote.account(new_id()) is None


def test_receipts_proven_by_the_writer_check_out_offline(linked: Linked) -> None:
    remote, service = linked.remote, linked.service
    issuer, alice, _ = accounts()
    remote.submit(OP_CREATE_ACCOUNTS, [Account(issuer, CNY, 1), Account(alice, CNY, 2)]).result()
    pays = [Transfer(new_id(), issuer, alice, 10 + i, CNY, 1) for i in range(5)]
    result = remote.submit(OP_CREATE_TRANSFERS, pays, receipts=True).result()
    assert isinstance(result.committed, link.ProvenEntries)
    assert set(result.committed.entries) == {t.seq for t in pays}
    reader = Reader(service.db, service.origin)
    for t in pays:
        from_memory = receipt(reader, t.seq, result.tree_size, remote.public_key, result.committed)
        assert check_receipt(from_memory, remote.public_key, transfer_id=t.id).id == t.id
        assert from_memory == receipt(reader, t.seq, result.tree_size, remote.public_key)
    plain = remote.submit(OP_CREATE_TRANSFERS, [Transfer(new_id(), issuer, alice, 1, CNY, 1)])
    assert plain.result().committed is None  # proofs are made only when asked for


def test_requests_made_together_on_the_event_loop_each_get_their_own_answer(
    linked: Linked,
) -> None:
    """Requests made in one turn of the event loop (sent as one frame) each get their own
    answer; one that cannot be pickled (a bug) fails its own caller alone."""
    remote = linked.remote
    issuer, alice, _ = accounts()
    remote.submit(OP_CREATE_ACCOUNTS, [Account(issuer, CNY, 1), Account(alice, CNY, 2)]).result()
    pays = [Transfer(new_id(), issuer, alice, 1 + i, CNY, 1) for i in range(20)]

    async def together() -> list[OpResult]:
        return await asyncio.gather(
            *(remote.execute(OP_CREATE_TRANSFERS, [t], receipts=True) for t in pays)
        )

    results = asyncio.run(together())
    assert [r.codes for r in results] == [[0]] * 20
    assert sorted(t.seq for t in pays) == list(range(2, 22))
    assert all(isinstance(r.committed, link.ProvenEntries) for r in results)

    unsendable = Transfer(new_id(), issuer, alice, 5, CNY, 1)
    unsendable.attachments = [lambda: None]  # pickle refuses a lambda
    good = Transfer(new_id(), issuer, alice, 7, CNY, 1)

    async def one_bad_one_good() -> list[OpResult | BaseException]:
        return await asyncio.gather(
            remote.execute(OP_CREATE_TRANSFERS, [unsendable]),
            remote.execute(OP_CREATE_TRANSFERS, [good]),
            return_exceptions=True,
        )

    bad, fine = asyncio.run(one_bad_one_good())
    assert isinstance(bad, pickle.PicklingError | AttributeError | TypeError), repr(bad)
    assert isinstance(fine, OpResult) and fine.codes == [0] and good.seq == 22
    assert not linked.lost.is_set()
    assert linked.service.committed_size() == 23  # 2 accounts, 20 payments and the good one


def test_a_stale_wallet_key_never_lets_a_payment_through(linked: Linked, tmp_path: Path) -> None:
    remote = linked.remote
    wallets = open_wallets(remote, tmp_path / "kyc.key")
    old, new = SigningKey.generate(), SigningKey.generate()
    try:
        wallets.onboard_operator("op_a").result()
        opened = [
            wallets.wallet_to_open(
                "op_a",
                new_id(),
                kind="personal",
                klass=4,
                public_key=bytes(key.verify_key),
                kyc={"phone": "+8613700000000"},
            )
            for key in (old, new)
        ]
        assert wallets.open_wallets("op_a", opened).result().codes == [0, 0]
    finally:
        wallets.close()
    payer, payee = opened[0].id, opened[1].id
    assert remote.wallet_key(payer) == (1, bytes(old.verify_key))
    rotate = UpdateWallet(payer, public_key=bytes(new.verify_key), reason="lost phone")
    assert remote.submit(OP_UPDATE_WALLETS, [rotate]).result().codes == [0]
    assert remote.wallet_key(payer) == (1, bytes(old.verify_key))  # remembered, now stale
    assert remote.wallet_key(payer, fresh=True) == (2, bytes(new.verify_key))

    def signed(key: SigningKey, version: int) -> Transfer:
        tid, expires = new_id(), time.time_ns() // 1_000_000 + 60_000
        auth = signing.sign_payment(key, version, tid, payer, payee, 10, "CNY", expires)
        return Transfer(tid, payer, payee, 10, CNY, 1, authorization=auth.encode())

    # what a worker that still remembered version 1 would have verified and passed on
    stale = remote.submit(OP_CREATE_TRANSFERS, [signed(old, 1)]).result()
    assert stale.codes == [Result.WALLET_KEY_ROTATED]
    current = remote.submit(OP_CREATE_TRANSFERS, [signed(new, 2)]).result()
    assert current.codes == [Result.EXCEEDS_CREDITS]  # past the key check: the wallet is empty


def test_a_call_to_the_writer_on_an_event_loop_is_reported_once(
    linked: Linked, caplog: pytest.LogCaptureFixture
) -> None:
    async def on_the_loop() -> object:
        return linked.remote.account(new_id())

    with caplog.at_level(logging.WARNING, logger="ledger.link"):
        assert linked.remote.account(new_id()) is None  # from a thread: as it should be
        assert not caplog.records
        assert asyncio.run(on_the_loop()) is None
        assert asyncio.run(on_the_loop()) is None
    reported = [r.getMessage() for r in caplog.records]
    assert len(reported) == 1 and reported[0].startswith("account waited on the writer on the")


def test_a_payer_whose_key_the_worker_lacks_is_verified_off_the_event_loop(
    linked: Linked, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    remote = linked.remote
    wallets = open_wallets(remote, tmp_path / "kyc.key")
    key = SigningKey.generate()
    try:
        wallets.onboard_operator("op_a").result()
        opened = [
            wallets.wallet_to_open(
                "op_a", new_id(), kind="personal", klass=4, public_key=bytes(key.verify_key),
                kyc={"phone": "+8613700000000"},
            )
            for _ in range(2)
        ]  # fmt: skip
        assert wallets.open_wallets("op_a", opened).result().codes == [0, 0]
        payer, payee = opened[0].id, opened[1].id
        assert not remote.knows_wallet_key(payer, 1)  # the worker has not seen it yet

        def payment() -> SignedPayment:
            tid, expires = new_id(), time.time_ns() // 1_000_000 + 60_000
            auth = signing.sign_payment(key, 1, tid, payer, payee, 10, "CNY", expires)
            return SignedPayment(tid, payer, payee, 10, expires, 1, auth.signature)

        with caplog.at_level(logging.WARNING, logger="ledger.link"):
            _, first = asyncio.run(wallets.pay([payment()]))
            assert remote.knows_wallet_key(payer, 1) and not remote.knows_wallet_key(payer, 2)
            _, second = asyncio.run(wallets.pay([payment()]))  # now verified inline
        assert not [r for r in caplog.records if "event loop" in r.getMessage()]
        # verified (not signature_invalid): refused by the engine, the new wallet is empty
        assert first.codes == second.codes == [Result.EXCEEDS_CREDITS]
    finally:
        wallets.close()


def test_a_full_queue_is_overloaded_on_the_worker_too(database_url: str, key_file: Path) -> None:
    service = LedgerService.open(database_url, key_file, "test.example/link", queue_max_events=2)
    directory = Path(tempfile.mkdtemp(prefix="lk-"))
    server = link.link_server(directory / "link.sock", service, WriterAdmission(service).check)
    remote = RemoteLedger(directory / "link.sock", service.db)
    try:
        three = [Account(new_id(), CNY, 1) for _ in range(3)]
        with pytest.raises(Overloaded):
            remote.submit(OP_CREATE_ACCOUNTS, three).result()
        assert remote.submit(OP_CREATE_ACCOUNTS, three[:2]).result().codes == [0, 0]
    finally:
        remote.close()
        server.close()
        service.close()
        shutil.rmtree(directory, ignore_errors=True)


# -- calls ----------------------------------------------------------------------------------------


def test_calls_read_the_writers_memory(linked: Linked) -> None:
    remote, service = linked.remote, linked.service
    assert (remote.public_key, remote.origin) == (service.public_key, service.origin)
    assert remote.public_key_b64() == service.public_key_b64()
    before = time.time_ns()
    assert before - 10**9 < remote.clock_ns() < time.time_ns() + 10**9
    assert remote.limits() == service.limits()
    assert asyncio.run(remote.admit(new_id(), 1, b"sig-1", 1000)) == KEY_ROTATED, "no wallet"


def test_the_writer_signs_statements_and_nothing_else(linked: Linked) -> None:
    message = signing.STATEMENT_LABEL + b"origin\nm\n2026-12-02\n5\nabc"
    signature = linked.remote.sign_statement(message)
    signing.verify(linked.service.public_key, message, signature)
    with pytest.raises(RuntimeError, match="signs statements"):
        linked.remote.sign_statement(b"test.example/link\n1\nroot\n")  # a checkpoint-like text


def test_a_writer_that_goes_away_fails_what_waits_and_what_follows(linked: Linked) -> None:
    remote = linked.remote
    issuer = new_id()
    assert remote.submit(OP_CREATE_ACCOUNTS, [Account(issuer, CNY, 1)]).result().codes == [0]
    linked.server.close()
    assert linked.lost.wait(10), "on_lost runs when the link breaks"
    with pytest.raises(LedgerUnavailable):
        remote.submit(OP_CREATE_ACCOUNTS, [Account(new_id(), CNY, 1)]).result()
    with pytest.raises(LedgerUnavailable):
        remote.account(issuer)
