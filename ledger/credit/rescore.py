"""Re-scoring many borrowers at once, with Dask: the same code on a local cluster or a real one.

``rescore`` splits a features table into partitions and scores each on a Dask worker with the
scorecard (shipped to the workers once), returning score, probability of bad and the top reason
per row, in the table's order. ``score_table`` is the single-process reference it must equal.
``local_cluster`` starts the 2-worker ``LocalCluster`` on 127.0.0.1 that ``ledger credit
rescore`` uses unless it is given a scheduler address.

``features_from_ledger`` is the nightly job's input: it asks a running ledger, as a lender, for
every live consent borrowers granted it, and reads each borrower's features under its consent
(each read journaled by the ledger, as any other). Only aggregates cross the wire.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import pandas as pd

from ledger.credit.scorecard import Scorecard, probability_from_score

PARTITION_ROWS: Final = 5_000
COLUMNS: Final = ("score", "probability_bad", "top_reason")


class LedgerReadError(RuntimeError):
    """The ledger refused a read (its error code and message)."""


def features_from_ledger(http: Any, page_limit: int = 1000) -> pd.DataFrame:
    """One row per live consent granted to the lender whose API key ``http`` (an
    ``httpx.Client`` with base URL and Authorization set) carries: ``borrower``, ``consent``,
    then the features, read under that consent. A consent revoked or expired since it was
    listed is skipped; any other refusal raises ``LedgerReadError``."""
    rows: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"status": "active", "limit": page_limit}
        if after is not None:
            params["starting_after"] = after
        page = _json(http.get("/v1/credit/consents", params=params))
        for consent in page["data"]:
            answer = http.get(
                f"/v1/credit/borrowers/{consent['borrower']}/features",
                params={"consent_id": consent["id"], "purpose": consent["purpose"]},
            )
            if answer.status_code == 403:  # revoked or expired meanwhile: no consent, no row
                continue
            read = _json(answer)
            rows.append({"borrower": read["borrower"], "consent": read["consent"],
                         **read["features"]})  # fmt: skip
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    return pd.DataFrame(rows, columns=None if rows else ["borrower", "consent"])


def _json(answer: Any) -> dict[str, Any]:
    if answer.status_code != 200:
        try:
            error = answer.json()["error"]
            message = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            message = answer.text[:200]
        raise LedgerReadError(f"{answer.request.method} {answer.request.url.path}: {message}")
    data: dict[str, Any] = answer.json()
    return data


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
