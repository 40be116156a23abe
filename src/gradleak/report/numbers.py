"""Number formatting shared by every renderer (experiments, audit, verdict pages)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def number(value: Any, digits: int = 4, *, missing: str = "null") -> str:
    """A float with ``digits`` significant digits, other values as text, None as ``missing``."""
    if value is None:
        return missing
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def mean_spread(values: Sequence[float], *, empty: str = "–") -> str:
    """``mean ± sample std`` (4 and 2 significant digits); the mean alone for one value."""
    if not values:
        return empty
    m = statistics.fmean(values)
    if len(values) == 1:
        return number(float(m))
    return f"{number(float(m))} ± {number(float(statistics.stdev(values)), 2)}"
