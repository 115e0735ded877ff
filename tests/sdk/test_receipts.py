"""wallet_sdk.receipts: receipts from a real ledger verify offline, every tampering fails, and a
ledger that rewrites its history is caught."""

from __future__ import annotations

import base64
import copy
import hashlib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import checkpoint as cp
from ledger import entry as entries
from ledger.checkpoint import Checkpoint
from tests.conftest import sqlite_url
from tests.sdk.test_client import ORIGIN, Bench, open_bench, open_funded_wallet
from wallet_sdk import (
    CheckpointTracker,
    Client,
    ForkDetected,
    Payment,
    ReceiptVerificationError,
    VerificationError,
    WalletKeys,
    check_receipt,
    verify_receipt,
)


@dataclass
class Ledger:
    bench: Bench
    client: Client
    payer: WalletKeys
    payee: WalletKeys
    payment: Payment
    key_file: Path

    @property
    def key(self) -> bytes:
        return self.bench.service.public_key

    def consistency(self, first: int, second: int) -> dict[str, Any]:
        answer = self.bench.api.get(
            "/v1/proofs/consistency", params={"first": first, "second": second}
        )
        assert answer.status_code == 200, answer.text
        proof: dict[str, Any] = answer.json()
        return proof

    def latest(self) -> Checkpoint:
        view = self.bench.api.get("/v1/checkpoints/latest").json()
        return Checkpoint(
            view["origin"], view["tree_size"], base64.b64decode(view["root_hash"]),
            view["timestamp"], base64.b64decode(view["signature"]),
        )  # fmt: skip

    def forge(self, size: int, root: bytes) -> Checkpoint:
        """A checkpoint signed with the ledger's own key over a root of our choosing: what a
        ledger that rewrote its history would sign."""
        return cp.sign(self.bench.service.key, ORIGIN, size, root, 1)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    tmp = tmp_path_factory.mktemp("receipts")
    with open_bench(sqlite_url(tmp), tmp / "ledger.key") as bench:
        client = Client(http_client=bench.api, api_key=bench.op_key)
        payer = open_funded_wallet(client, bench)
        payee = client.create_wallet(kyc={"phone": "+8613900000000"}, wallet_class=4)
        for amount in (11, 12, 13):
            client.pay(payer, payee, amount)
        payment = client.pay(payer, payee, 1230, metadata={"order": "R-1"})
        client.pay(payer, payee, 14)
        yield Ledger(bench, client, payer, payee, payment, tmp / "ledger.key")


@pytest.fixture
def receipt(ledger: Ledger) -> dict[str, Any]:
    return copy.deepcopy(ledger.payment.receipt)


def test_a_receipt_from_a_real_ledger_verifies_offline(
    ledger: Ledger, receipt: dict[str, Any]
) -> None:
    assert receipt["tree_size"] > 8 and receipt["inclusion_proof"]  # a real proof, not trivial
    assert verify_receipt(receipt, ledger.key)
    assert verify_receipt(receipt, base64.b64encode(ledger.key).decode())
    tid = uuid.UUID(ledger.payment.id).int
    decoded = check_receipt(receipt, ledger.key, transfer_id=tid)
    assert isinstance(decoded, entries.TransferEntry)
    assert (decoded.id, decoded.amount) == (tid, 1230)
    assert decoded.debit_account_id == ledger.payer.wallet_id_int
    assert verify_receipt(receipt, ledger.key, transfer_id=tid)
    assert not verify_receipt(receipt, ledger.key, transfer_id=tid + 1)
    leaf = hashlib.sha256(b"\x00" + base64.b64decode(receipt["entry"])).digest()
    with_leaf = {**receipt, "leaf_hash": _b64(leaf)}
    assert verify_receipt(with_leaf, ledger.key)


def test_a_receipt_against_a_later_checkpoint_verifies_too(ledger: Ledger) -> None:
    later = ledger.client.receipt(ledger.payer, ledger.payment.id)
    assert later["tree_size"] > ledger.payment.receipt["tree_size"]
    assert later["leaf_index"] == ledger.payment.seq
    assert verify_receipt(later, ledger.key)


def _flip(value: str, index: int = -1) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _flip_note(note: str) -> str:
    signature = note.rstrip("\n").split(" ")[-1]
    return note.replace(signature, _flip(signature))


Tamper = Callable[[dict[str, Any]], object]
TAMPERINGS: dict[str, Tamper] = {
    "entry last byte": lambda r: r.update(entry=_flip(r["entry"])),
    "entry amount byte": lambda r: r.update(entry=_flip(r["entry"], 10 + 4 * 16)),
    "entry timestamp byte": lambda r: r.update(entry=_flip(r["entry"], 9)),
    "entry truncated": lambda r: r.update(entry=_b64(base64.b64decode(r["entry"])[:-1])),
    "entry not base64": lambda r: r.update(entry="%%%"),
    "proof element": lambda r: r["inclusion_proof"].__setitem__(0, _flip(r["inclusion_proof"][0])),
    "proof last element": lambda r: r["inclusion_proof"].__setitem__(
        -1, _flip(r["inclusion_proof"][-1])
    ),
    "proof element dropped": lambda r: r["inclusion_proof"].pop(),
    "proof element added": lambda r: r["inclusion_proof"].append(r["inclusion_proof"][0]),
    "proof element short": lambda r: r["inclusion_proof"].__setitem__(0, _b64(b"\x00" * 31)),
    "proof not a list": lambda r: r.update(inclusion_proof="".join(r["inclusion_proof"])),
    "root": lambda r: r["checkpoint"].update(root_hash=_flip(r["checkpoint"]["root_hash"])),
    "root, note dropped": lambda r: (
        r["checkpoint"].update(root_hash=_flip(r["checkpoint"]["root_hash"])),
        r["checkpoint"].pop("note"),
    ),
    "signature": lambda r: r["checkpoint"].update(signature=_flip(r["checkpoint"]["signature"])),
    "signature, note dropped": lambda r: (
        r["checkpoint"].update(signature=_flip(r["checkpoint"]["signature"])),
        r["checkpoint"].pop("note"),
    ),
    "note signature": lambda r: r["checkpoint"].update(note=_flip_note(r["checkpoint"]["note"])),
    "checkpoint tree_size": lambda r: r["checkpoint"].update(
        tree_size=r["checkpoint"]["tree_size"] + 1
    ),
    "checkpoint timestamp": lambda r: r["checkpoint"].update(
        timestamp=r["checkpoint"]["timestamp"] + 1
    ),
    "checkpoint origin": lambda r: r["checkpoint"].update(origin="evil.example/ledger"),
    "tree_size + 1": lambda r: r.update(tree_size=r["tree_size"] + 1),
    "tree_size - 1": lambda r: r.update(tree_size=r["tree_size"] - 1),
    "tree_size as text": lambda r: r.update(tree_size=str(r["tree_size"])),
    "leaf_index - 1": lambda r: r.update(leaf_index=r["leaf_index"] - 1),
    "leaf_index 0": lambda r: r.update(leaf_index=0),
    "leaf_index = tree_size": lambda r: r.update(leaf_index=r["tree_size"]),
    "leaf_index negative": lambda r: r.update(leaf_index=-1),
    "leaf_index bool": lambda r: r.update(leaf_index=True),
    "leaf_hash wrong": lambda r: r.update(leaf_hash=_b64(b"\x00" * 32)),
    "checkpoint missing": lambda r: r.pop("checkpoint"),
    "checkpoint a list": lambda r: r.update(checkpoint=[r["checkpoint"]]),
}


REASONS = {  # which check catches it (the first to, in check_receipt's order)
    "entry last byte": "inclusion proof", "entry amount byte": "inclusion proof",
    "entry timestamp byte": "inclusion proof", "entry truncated": "not canonical",
    "entry not base64": "entry is not valid base64",
    "proof element": "inclusion proof", "proof last element": "inclusion proof",
    "proof element dropped": "inclusion proof", "proof element added": "inclusion proof",
    "proof element short": "32", "proof not a list": "not a list",
    "root": "disagree", "root, note dropped": "not signed", "signature": "disagree",
    "signature, note dropped": "not signed", "note signature": "disagree",
    "checkpoint tree_size": "disagree", "checkpoint timestamp": "disagree",
    "checkpoint origin": "disagree", "tree_size + 1": "says tree_size",
    "tree_size - 1": "says tree_size", "tree_size as text": "tree_size is not",
    "leaf_index - 1": "inclusion proof", "leaf_index 0": "inclusion proof",
    "leaf_index = tree_size": "not below", "leaf_index negative": "leaf_index is not",
    "leaf_index bool": "leaf_index is not", "leaf_hash wrong": "leaf_hash",
    "checkpoint missing": "not an object", "checkpoint a list": "not an object",
}  # fmt: skip


def test_every_tampering_has_a_named_reason() -> None:
    assert sorted(REASONS) == sorted(TAMPERINGS)


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_every_tampered_field_fails(ledger: Ledger, receipt: dict[str, Any], name: str) -> None:
    TAMPERINGS[name](receipt)
    assert not verify_receipt(receipt, ledger.key)
    with pytest.raises(ReceiptVerificationError, match=REASONS[name]):
        check_receipt(receipt, ledger.key)


def test_another_ledgers_key_fails(receipt: dict[str, Any]) -> None:
    assert not verify_receipt(receipt, WalletKeys.generate().public_key)
    assert not verify_receipt(receipt, b"\x00" * 32)
    assert not verify_receipt(receipt, b"short")
    assert not verify_receipt(receipt, "not base64 at all")
    assert not verify_receipt(receipt, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "garbage", [None, [], "receipt", 42, {}, {"entry": 5}, {"checkpoint": {}}, b"\x00" * 64]
)
def test_garbage_is_not_a_receipt_and_never_raises(ledger: Ledger, garbage: Any) -> None:
    assert verify_receipt(garbage, ledger.key) is False


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.floats(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8),
                                                                       children, max_size=3),
    max_leaves=8,
)  # fmt: skip


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_mutation_of_a_real_receipt_fails_without_raising(
    ledger: Ledger, data: st.DataObject
) -> None:
    receipt = copy.deepcopy(ledger.payment.receipt)
    target: Any = receipt
    path: list[Any] = []
    while isinstance(target, dict | list) and target:  # walk down to a random place
        key = data.draw(st.sampled_from(sorted(target) if isinstance(target, dict)
                                        else range(len(target))))  # fmt: skip
        path.append(key)
        if not isinstance(target[key], dict | list) or data.draw(st.booleans()):
            break
        target = target[key]
    new = data.draw(JSON)
    original = target[path[-1]]
    target[path[-1]] = new
    unchanged = new == original and type(new) is type(original)
    optional = path == ["checkpoint", "note"] and new is None  # the note repeats the fields
    assert verify_receipt(receipt, ledger.key) is (unchanged or optional)


# --- checkpoint memory and forks ------------------------------------------------------------------


def test_the_first_checkpoint_is_trusted_and_remembered_across_restarts(ledger: Ledger) -> None:
    tracker = CheckpointTracker(ledger.key)
    latest = ledger.latest()
    assert tracker.latest(ORIGIN) is None
    assert tracker.observe(latest)
    assert tracker.latest(ORIGIN) == latest
    restored = CheckpointTracker(base64.b64encode(ledger.key).decode(), notes=tracker.notes())
    assert restored.latest(ORIGIN) == latest
    with pytest.raises(VerificationError):
        CheckpointTracker(WalletKeys.generate().public_key, notes=tracker.notes())


def test_consistent_checkpoints_are_accepted_in_either_order(ledger: Ledger) -> None:
    old = ledger.payment.receipt["checkpoint"]
    tracker = CheckpointTracker(ledger.key)
    tracker.observe(old)
    ledger.client.pay(ledger.payer, ledger.payee, 15)
    new = ledger.latest()
    assert tracker.proof_sizes(new) == (old["tree_size"], new.size)
    assert tracker.observe(new) is False  # no proof given: asks for one, changes nothing
    remembered = tracker.latest(ORIGIN)
    assert remembered is not None and remembered.size == old["tree_size"]
    wrong_sizes = ledger.consistency(1, new.size)
    assert tracker.observe(new, wrong_sizes) is False
    assert tracker.observe(new, ledger.consistency(old["tree_size"], new.size))
    assert tracker.latest(ORIGIN) == new
    # an older checkpoint, seen late, is checked against the newer one and does not replace it
    assert tracker.observe(old, ledger.consistency(old["tree_size"], new.size))
    assert tracker.observe(new)  # the same checkpoint again needs no proof
    assert tracker.latest(ORIGIN) == new


def test_a_checkpoint_over_another_root_is_a_fork(ledger: Ledger) -> None:
    tracker = CheckpointTracker(ledger.key)
    first = ledger.payment.receipt["checkpoint"]
    tracker.observe(first)
    real = ledger.latest()
    size = real.size
    proof = ledger.consistency(first["tree_size"], size)
    forged = ledger.forge(size, hashlib.sha256(b"another history").digest())
    assert forged.verify(ledger.key)  # properly signed: only the history is wrong
    with pytest.raises(ForkDetected) as grown:
        tracker.observe(forged, proof)
    assert grown.value.presented == forged
    assert tracker.observe(real, proof)
    with pytest.raises(ForkDetected, match="two different roots"):  # same size, other root
        tracker.observe(ledger.forge(size, hashlib.sha256(b"x").digest()))
    older = ledger.forge(first["tree_size"], hashlib.sha256(b"y").digest())  # smaller, other root
    with pytest.raises(ForkDetected, match="not a prefix"):
        tracker.observe(older, ledger.consistency(first["tree_size"], size))
    assert tracker.latest(ORIGIN) == real  # memory is not moved by what failed


def test_a_malformed_proof_is_refused_but_proves_no_fork(ledger: Ledger) -> None:
    tracker = CheckpointTracker(ledger.key)
    first = ledger.payment.receipt["checkpoint"]
    tracker.observe(first)
    real = ledger.latest()
    proof = ledger.consistency(first["tree_size"], real.size)
    for broken in ({**proof, "proof": "AAAA"}, {**proof, "proof": ["short"]}):
        with pytest.raises(VerificationError) as refused:
            tracker.observe(real, broken)
        assert not isinstance(refused.value, ForkDetected)
    assert tracker.latest(ORIGIN) is not None and tracker.latest(ORIGIN) != real


def test_a_bad_signature_is_not_a_fork_but_still_refused(ledger: Ledger) -> None:
    tracker = CheckpointTracker(ledger.key)
    real = ledger.latest()
    unsigned = Checkpoint(real.origin, real.size, real.root, real.timestamp, b"\x00" * 64)
    with pytest.raises(VerificationError) as refused:
        tracker.observe(unsigned)
    assert not isinstance(refused.value, ForkDetected)
    assert tracker.latest(ORIGIN) is None


@contextmanager
def same_key_other_history(ledger: Ledger, tmp_path: Path) -> Iterator[tuple[Bench, Client]]:
    """A second database opened with the first ledger's key file and origin: the same ledger
    name telling another story. Its client shares the first client's checkpoint memory."""
    key_file = tmp_path / "ledger.key"
    key_file.write_bytes(ledger.key_file.read_bytes())
    key_file.chmod(0o600)
    with open_bench(sqlite_url(tmp_path), key_file) as other:
        assert other.service.public_key == ledger.key
        yield (
            other,
            Client(
                http_client=other.api, api_key=other.op_key, checkpoints=ledger.client.checkpoints
            ),
        )


def test_a_ledger_that_rewrote_its_history_is_caught(ledger: Ledger, tmp_path: Path) -> None:
    ledger.client.pay(ledger.payer, ledger.payee, 16)
    assert ledger.client.checkpoints is not None
    seen = ledger.client.checkpoints.latest(ORIGIN)
    assert seen is not None
    with same_key_other_history(ledger, tmp_path) as (other, client):
        payer = open_funded_wallet(client, other)
        payee = client.create_wallet(kyc={"phone": "+8613900000001"}, wallet_class=4)
        while other.service.sequencer.committed_size <= seen.size:  # grow past what was seen
            other.fund_operator()
        with pytest.raises(ForkDetected, match="not a prefix") as fork:
            client.pay(payer, payee, 100)
        assert fork.value.remembered == seen
    assert ledger.client.checkpoints.latest(ORIGIN) == seen


def test_a_ledger_that_rolled_back_is_caught(ledger: Ledger, tmp_path: Path) -> None:
    ledger.client.pay(ledger.payer, ledger.payee, 17)
    assert ledger.client.checkpoints is not None
    seen = ledger.client.checkpoints.latest(ORIGIN)
    assert seen is not None
    with same_key_other_history(ledger, tmp_path) as (other, client):
        payer = open_funded_wallet(client, other)
        payee = client.create_wallet(kyc={"phone": "+8613900000001"}, wallet_class=4)
        assert other.service.sequencer.committed_size + 5 < seen.size  # a shorter story
        with pytest.raises(ForkDetected, match="rolled back"):
            client.pay(payer, payee, 100)
    assert ledger.client.checkpoints.latest(ORIGIN) == seen
