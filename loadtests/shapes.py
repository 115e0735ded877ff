"""The traffic shapes, as pure maths (no locust import, so tests can check them in-process)."""

from __future__ import annotations

import itertools
from typing import Final

SHAPES: Final[dict[str, tuple[tuple[float, float], ...]]] = {
    # (fraction of --shape-seconds, multiple of --base-users); straight lines between points
    "steady": ((0.0, 1.0), (1.0, 1.0)),
    "lunch_peak": ((0.0, 1.0), (0.2, 1.0), (0.45, 5.0), (0.6, 5.0), (0.85, 1.0), (1.0, 1.0)),
    "double11": ((0.0, 1.0), (0.4, 1.0), (0.42, 20.0), (0.52, 20.0), (0.54, 1.0), (1.0, 1.0)),
}


def multiplier(shape: str, fraction: float) -> float:
    """How many times ``--base-users`` the shape asks for at ``fraction`` of its length."""
    points = SHAPES[shape]
    fraction = min(max(fraction, 0.0), 1.0)
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= fraction <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (fraction - x0) / (x1 - x0)
    return points[-1][1]


def users_at(
    shape: str, base_users: int, run_time_s: float, shape_seconds: float, ramp_seconds: float = 0.0
) -> int:
    """Users the run asks for ``run_time_s`` into it: ``base_users`` times the shape's multiple,
    at least one; over the first ``ramp_seconds`` it rises in a straight line from none to that
    (0: every user starts at once)."""
    users = base_users * multiplier(shape, run_time_s / shape_seconds)
    if ramp_seconds > 0 and run_time_s < ramp_seconds:
        users *= run_time_s / ramp_seconds
    return max(1, round(users))
