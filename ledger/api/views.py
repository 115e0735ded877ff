"""Domain objects -> JSON-ready dicts for responses (one place, so every route agrees)."""

from __future__ import annotations

import base64
import functools
from typing import Any, Protocol

from ledger import checkpoint, entry
from ledger.api.models import format_id
from ledger.domain import (
    ACCOUNT_FLAG_NAMES,
    LEDGER_CURRENCIES,
    TRANSFER_FLAG_NAMES,
    AccountFlags,
    LimitSet,
    PendingState,
    Result,
    Wallet,
    flag_names,
)
from ledger.engine import OpResult
from ledger.store.queries import AccountView, EntryView, Reader, TransferView


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def result_label(code: int) -> str:
    return "ok" if code == 0 else Result(code).name.lower()


def item_results(items: list[Any], result: OpResult) -> dict[str, Any]:
    """Per-item results of a batch: accounts and transfers alike carry id, seq and timestamp."""
    out = []
    for i, (item, code) in enumerate(zip(items, result.codes, strict=True)):
        ok = code == 0
        out.append(
            {
                "index": i,
                "id": format_id(item.id),
                "result": result_label(code),
                "replayed": i in result.replayed,
                "seq": item.seq if ok and getattr(item, "seq", -1) >= 0 else None,
                "timestamp": getattr(item, "timestamp", None) if ok else None,
            }
        )
        if i in result.details:
            out[-1]["limit"] = result.details[i]
    return {"results": out}


def account_view(a: AccountView) -> dict[str, Any]:
    return {
        "id": format_id(a.id),
        "currency": LEDGER_CURRENCIES.get(a.ledger, str(a.ledger)),
        "code": a.code,
        "flags": flag_names(a.flags, ACCOUNT_FLAG_NAMES),
        "owner": a.owner,
        "operator": a.operator,
        "balances": {
            "debits_pending": a.debits_pending,
            "debits_posted": a.debits_posted,
            "credits_pending": a.credits_pending,
            "credits_posted": a.credits_posted,
        },
        "created_seq": a.seq,
        "timestamp": a.timestamp,
    }


def transfer_view(t: TransferView) -> dict[str, Any]:
    e = t.entry
    return {
        "id": format_id(e.id),
        "debit_account_id": format_id(e.debit_account_id),
        "credit_account_id": format_id(e.credit_account_id),
        "amount": e.amount,
        "currency": LEDGER_CURRENCIES.get(e.ledger, str(e.ledger)),
        "code": e.code,
        "flags": flag_names(e.flags, TRANSFER_FLAG_NAMES),
        "pending_id": format_id(e.pending_id) if e.pending_id else None,
        "timeout_s": e.timeout_s,
        "metadata": entry.parse_metadata(e.metadata),
        "timestamp": e.timestamp,
        "result": t.result.name.lower(),
        "seq": t.seq,
        "pending_state": PendingState(t.state).name.lower() if t.state else None,
    }


def entry_view(e: EntryView) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "kind": entry.KIND_NAMES[e.entry.kind],
        "entry": entry.to_json(e.entry),
        "body": b64(e.body),
    }


class ProvesEntries(Protocol):
    """What the writer proved of a request's entries: ``sequencer.CommittedBatch`` in its own
    process, ``link.ProvenEntries`` in an HTTP worker."""

    @property
    def checkpoint(self) -> checkpoint.Checkpoint: ...

    def proves(self, seq: int, tree_size: int) -> bool: ...

    def body(self, seq: int) -> bytes: ...

    def inclusion_proof(self, seq: int) -> list[bytes]: ...


def receipt(
    reader: Reader,
    seq: int,
    tree_size: int,
    public_key: bytes,
    committed: ProvesEntries | None = None,
) -> dict[str, Any]:
    """Entry + inclusion proof + signed checkpoint: everything ``wallet_sdk.verify_receipt``
    needs to check a payment offline with only the ledger's public key.

    ``committed`` is ``OpResult.committed`` of the request that just made the entry: its
    receipt then comes from the writer's memory; any other is read from the database."""
    if committed is not None and committed.proves(seq, tree_size):
        body, signed = committed.body(seq), committed.checkpoint
        proof = committed.inclusion_proof(seq)
    else:
        found = reader.entry_at(seq)
        stored = reader.checkpoint_at(tree_size)
        assert found is not None and stored is not None, "a receipt names a committed checkpoint"
        body, signed, proof = found.body, stored, reader.inclusion_proof(seq, tree_size)
    return {
        "entry": b64(body),
        "leaf_index": seq,
        "tree_size": tree_size,
        "inclusion_proof": [b64(h) for h in proof],
        "checkpoint": checkpoint_view(signed, public_key),
    }


def wallet_view(
    wallet: Wallet, account: AccountView, limits_in_force: tuple[str, dict[int, LimitSet]]
) -> dict[str, Any]:
    version, by_class = limits_in_force
    limits = wallet.limits or by_class.get(wallet.klass)
    return {
        "id": format_id(wallet.id),
        "kind": wallet.kind,
        "class": wallet.klass,
        "operator": wallet.operator,
        "public_key": b64(wallet.public_key),
        "key_version": wallet.key_version,
        "linked_bank_account": format_id(wallet.linked_bank) if wallet.linked_bank else None,
        "reverse_waterfall": wallet.reverse_waterfall,
        "operator_float_account": format_id(wallet.float_account),
        "parent": format_id(wallet.parent) if wallet.parent else None,
        "bound_payee": format_id(wallet.bound_payee) if wallet.bound_payee else None,
        "closed": bool(account.flags & AccountFlags.CLOSED),
        "balance_fen": account.credits_posted - account.debits_posted,
        "available_fen": account.credits_posted - account.debits_posted - account.debits_pending,
        "limits": limits.as_dict() if limits is not None else None,
        "limits_version": version,
        "spent": {
            "day": wallet.day,
            "day_fen": wallet.spent_day,
            "year": wallet.year,
            "year_fen": wallet.spent_year,
        },
    }


def checkpoint_view(c: checkpoint.Checkpoint, public_key: bytes) -> dict[str, Any]:
    return dict(_checkpoint_view(c, public_key))


@functools.lru_cache(maxsize=64)
def _checkpoint_view(c: checkpoint.Checkpoint, public_key: bytes) -> dict[str, Any]:
    """Made once per checkpoint: every receipt of a batch carries the same one (its signed
    note costs a hash and two encodings)."""
    return {
        "origin": c.origin,
        "tree_size": c.size,
        "root_hash": b64(c.root),
        "timestamp": c.timestamp,
        "signature": b64(c.signature),
        "note": c.note(public_key),
    }
