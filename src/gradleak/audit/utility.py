"""A defense's utility cost for the recommendation: paired FL trainings with and without it.

Each setting is trained ``UTILITY_TRIALS`` times with the same seeds as the undefended training
(same data partition, initialisation and client sampling), so the drop is measured pairwise:
``drop_i = 100 * (acc_none_i - acc_defended_i)`` percentage points; the cost is their mean with a
Student-t 95 % interval over the pairs. A test split of ``m`` images resolves accuracy only in
steps of ``100 / m`` points: when that step exceeds the accuracy budget, one image decides
whether a defense fits, and the cost is marked unresolved.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

UTILITY_TRIALS = 3
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262}  # Student-t 97.5 % quantiles by degrees of freedom (scipy.stats.t.ppf)


@dataclass(frozen=True)
class Cost:
    """A setting's measured accuracy drop (points) over paired trainings."""

    mean: float | None
    interval: tuple[float, float] | None
    pairs: int
    resolution: float | None  # points one test image is worth
    resolved: bool

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy_drop": self.mean, "accuracy_drop_interval": self.interval,
                "pairs": self.pairs, "resolution_points": self.resolution,
                "resolved": self.resolved}


def t_interval(values: list[float]) -> tuple[float, float] | None:
    """Student-t 95 % interval of the mean (None for fewer than 2 values)."""
    if len(values) < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = T_975.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def paired_cost(base: list[float | None], defended: list[float | None], *,
                test_samples: int | None, max_drop: float) -> Cost:
    """The drop of ``defended`` against ``base`` accuracies (fractions, same seeds in the same
    order; pairs with a missing side are left out)."""
    drops = [100.0 * (b - d) for b, d in zip(base, defended, strict=False)
             if b is not None and d is not None]
    resolution = 100.0 / test_samples if test_samples else None
    resolved = bool(drops) and resolution is not None and resolution <= max_drop
    return Cost(mean=statistics.fmean(drops) if drops else None, interval=t_interval(drops),
                pairs=len(drops), resolution=resolution, resolved=resolved)
