"""The id filter never says "no" to an id it was given, whatever the ids look like."""

from __future__ import annotations

import random

from ledger.idfilter import IdFilter
from ledger.ids import new_id


def test_no_false_negatives_and_few_false_positives() -> None:
    rng = random.Random(7)
    kinds = {
        "uuid7": [new_id() for _ in range(50_000)],
        "random": [rng.getrandbits(128) for _ in range(50_000)],
        "sequential": list(range(1, 50_001)),
    }
    for name, ids in kinds.items():
        f = IdFilter(ids)
        assert all(f.might_contain(i) for i in ids), name
        given = set(ids)
        others = [rng.getrandbits(128) for _ in range(20_000)] + list(range(10**6, 10**6 + 20_000))
        false_maybe = sum(f.might_contain(i) for i in others if i not in given)
        assert false_maybe / len(others) < 0.01, (name, false_maybe)


def test_ids_are_time_ordered_and_unique() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all((i >> 76) & 0xF == 7 for i in ids), "UUID version 7"
