"""Re-scoring many borrowers at once, with Dask: the same code on a local cluster or a real one.

``rescore`` splits a features table into partitions and scores each on a Dask worker with the
scorecard (shipped to the workers once), returning score, probability of bad and the top reason
per row, in the table's order. ``score_table`` is the single-process reference it must equal.
``local_cluster`` starts the 2-worker ``LocalCluster`` on 127.0.0.1 that ``ledger credit
rescore`` uses unless it is given a scheduler address.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import pandas as pd

from ledger.credit.scorecard import Scorecard, probability_from_score

PARTITION_ROWS: Final = 5_000
COLUMNS: Final = ("score", "probability_bad", "top_reason")


def score_table(card: Scorecard, table: pd.DataFrame) -> pd.DataFrame:
    """Score every row: score, probability of bad and the characteristic that cost the most."""
    scores, reasons = card.explain(table, limit=1)
    return pd.DataFrame(
        {
            "score": scores,
            "probability_bad": [probability_from_score(s) for s in scores],
            "top_reason": [r[0].text() if r else "" for r in reasons],
        },
        index=table.index,
    )


@contextmanager
def local_cluster(workers: int = 2) -> Iterator[Any]:
    """A Dask client on a ``LocalCluster`` of ``workers`` processes on 127.0.0.1."""
    from dask.distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def rescore(
    client: Any, card: Scorecard, table: pd.DataFrame, partition_rows: int = PARTITION_ROWS
) -> pd.DataFrame:
    """``score_table`` over Dask partitions on ``client``'s cluster; rows in the table's order."""
    import dask.dataframe as dd

    frame = table.reset_index(drop=True)
    parts = max(1, -(-len(frame) // partition_rows))
    shipped = client.scatter(card, broadcast=True)
    meta = pd.DataFrame(
        {"score": pd.Series(dtype=float), "probability_bad": pd.Series(dtype=float),
         "top_reason": pd.Series(dtype=object)}
    )  # fmt: skip
    lazy = dd.from_pandas(frame, npartitions=parts).map_partitions(
        _score_partition, shipped, meta=meta
    )
    return client.compute(lazy).result()


def _score_partition(part: pd.DataFrame, card: Scorecard) -> pd.DataFrame:
    return score_table(card, part)
