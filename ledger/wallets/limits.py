"""Wallet limits by KYC class, as versioned configuration.

Limits changed between pilot phases, so each set has a version name; the one in force is
recorded in the journal (``limits_activated``) whenever it changes, and every rejection names the
version, the limit and the amount that would have been allowed. Amounts are fen; 0 = no limit.

``pboc-2021`` follows the People's Bank of China's July 2021 white paper on e-CNY: class 4
(phone number only) ¥10,000 balance, ¥2,000 per payment, ¥5,000 a day, ¥50,000 a year; class 2
(ID and bank account) ¥500,000 balance, ¥50,000 per payment, ¥100,000 a day; class 1 without
limits. The white paper gives no figures for class 3, so this file puts it between classes 2 and
4; the yearly limit of class 2 is likewise not given and left open.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Final

from ledger.domain import LimitSet

YUAN: Final = 100

VERSIONS: Final[dict[str, dict[int, LimitSet]]] = {
    "pboc-2021": {
        1: LimitSet(balance_cap=0, single=0, daily=0, annual=0),
        2: LimitSet(500_000 * YUAN, 50_000 * YUAN, 100_000 * YUAN, 0),
        3: LimitSet(20_000 * YUAN, 5_000 * YUAN, 10_000 * YUAN, 200_000 * YUAN),
        4: LimitSet(10_000 * YUAN, 2_000 * YUAN, 5_000 * YUAN, 50_000 * YUAN),
    },
}
DEFAULT_VERSION: Final = "pboc-2021"


class LimitsError(ValueError):
    pass


def load(
    version: str | None = None, extra_file: Path | None = None
) -> tuple[str, dict[int, LimitSet]]:
    """The limits in force: ``version`` (default $LEDGER_LIMITS_VERSION, else pboc-2021), from the
    built-in versions or a JSON file ($LEDGER_LIMITS_FILE) of the form
    ``{"<version>": {"1": {"balance_cap": 0, "single": 0, "daily": 0, "annual": 0}, ...}}``."""
    versions = dict(VERSIONS)
    path = extra_file or (Path(p) if (p := os.environ.get("LEDGER_LIMITS_FILE")) else None)
    if path is not None:
        versions.update(_parse(json.loads(path.read_text())))
    name = version or os.environ.get("LEDGER_LIMITS_VERSION") or DEFAULT_VERSION
    if name not in versions:
        raise LimitsError(f"unknown limits version {name!r}; known: {sorted(versions)}")
    return name, versions[name]


def _parse(data: dict[str, dict[str, dict[str, int]]]) -> dict[str, dict[int, LimitSet]]:
    out = {}
    for name, classes in data.items():
        parsed = {}
        for klass, values in classes.items():
            if set(values) != {"balance_cap", "single", "daily", "annual"}:
                raise LimitsError(f"{name} class {klass}: need balance_cap, single, daily, annual")
            if not all(type(v) is int and v >= 0 for v in values.values()):
                raise LimitsError(f"{name} class {klass}: limits are non-negative integer fen")
            parsed[int(klass)] = LimitSet(**values)
        if sorted(parsed) != [1, 2, 3, 4]:
            raise LimitsError(f"{name}: define classes 1 to 4")
        out[name] = parsed
    return out
