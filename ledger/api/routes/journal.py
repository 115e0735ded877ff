"""The verifiable journal: checkpoints, entries, inclusion and consistency proofs, public key.

Checkpoints, proofs and the public key are public: they are hashes and signatures, and anyone
must be able to check the log. Entries themselves need a credential."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from ledger import checkpoint as cp
from ledger import merkle
from ledger.api.deps import CurrentPrincipal, LedgerDep, ReaderDep
from ledger.api.errors import APIError
from ledger.api.models import (
    CheckpointPublic,
    ConsistencyProofPublic,
    EntryPublic,
    InclusionProofPublic,
    PublicKey,
)
from ledger.api.views import b64, checkpoint_view, entry_view

router = APIRouter(prefix="/v1", tags=["journal"])


def _latest_size(reader: Any) -> int:
    latest = reader.latest_checkpoint()
    return latest.size if latest else 0


@router.get("/public_key", response_model=PublicKey)
def read_public_key(ledger: LedgerDep) -> Any:
    """The Ed25519 key that signs every checkpoint."""
    return {
        "algorithm": "Ed25519",
        "public_key": ledger.public_key_b64(),
        "key_id": cp.key_id(ledger.origin, ledger.public_key).hex(),
        "origin": ledger.origin,
    }


@router.get("/checkpoints/latest", response_model=CheckpointPublic)
def read_latest_checkpoint(ledger: LedgerDep, reader: ReaderDep) -> Any:
    latest = reader.latest_checkpoint()
    if latest is None:
        raise APIError(404, "checkpoint_not_found", "the log is empty: nothing is signed yet")
    return checkpoint_view(latest, ledger.public_key)


@router.get("/checkpoints/{tree_size}", response_model=CheckpointPublic)
def read_checkpoint(tree_size: int, ledger: LedgerDep, reader: ReaderDep) -> Any:
    """The checkpoint signed when the log reached ``tree_size`` (one per committed batch)."""
    found = reader.checkpoint_at(tree_size)
    if found is None:
        raise APIError(
            404, "checkpoint_not_found", f"no checkpoint at size {tree_size}", param="tree_size"
        )
    return checkpoint_view(found, ledger.public_key)


@router.get("/journal/entries/{seq}", response_model=EntryPublic)
def read_entry(seq: int, principal: CurrentPrincipal, reader: ReaderDep) -> Any:
    found = reader.entry_at(seq)
    if found is None:
        raise APIError(404, "entry_not_found", f"no entry at seq {seq}", param="seq")
    if not principal.is_central_bank:
        operators = {reader.operator_of(n) for n in reader.entry_accounts(seq) if n is not None}
        if principal.operator not in operators:
            raise APIError(404, "entry_not_found", f"no entry at seq {seq}", param="seq")
    return entry_view(found)


@router.get("/proofs/inclusion", response_model=InclusionProofPublic)
def read_inclusion_proof(
    reader: ReaderDep,
    leaf_index: Annotated[int, Query(ge=0, description="The entry's seq.")],
    tree_size: Annotated[int | None, Query(ge=1, description="Default: latest.")] = None,
) -> Any:
    """Proof that entry ``leaf_index`` is in the tree of ``tree_size`` entries (RFC 9162)."""
    size = tree_size or _latest_size(reader)
    latest = _latest_size(reader)
    if size > latest:
        raise APIError(
            422, "tree_size_too_large", f"the log has {latest} entries", param="tree_size"
        )
    if leaf_index >= size:
        raise APIError(
            422, "leaf_index_out_of_range", f"leaf_index must be < {size}", param="leaf_index"
        )
    found = reader.entry_at(leaf_index)
    assert found is not None
    proof = reader.inclusion_proof(leaf_index, size)
    return {
        "leaf_index": leaf_index,
        "tree_size": size,
        "leaf_hash": b64(merkle.leaf_hash(found.body)),
        "proof": [b64(h) for h in proof],
    }


@router.get("/proofs/consistency", response_model=ConsistencyProofPublic)
def read_consistency_proof(
    reader: ReaderDep,
    first: Annotated[int, Query(ge=1)],
    second: Annotated[int | None, Query(ge=1, description="Default: latest.")] = None,
) -> Any:
    """Proof that the tree of ``first`` entries is a prefix of the tree of ``second``."""
    latest = _latest_size(reader)
    size = second or latest
    if size > latest:
        raise APIError(422, "tree_size_too_large", f"the log has {latest} entries", param="second")
    if first > size:
        raise APIError(422, "first_after_second", "first must be <= second", param="first")
    proof = reader.consistency_proof(first, size)
    return {"first": first, "second": size, "proof": [b64(h) for h in proof]}
