"""The verdicts' tests: exact (or seeded Monte Carlo) randomisation tests over seeds and grids.

A test is a sum of independent *units* (one per seed, or per seed and grid), each with its
observed contribution to the statistic and its distribution under the null: a Spearman block
permutes the grid within one seed (the null: the metric is exchangeable across the grid points
of a seed), a flip unit is one seed's paired effect whose sign the null makes a coin toss.
The null distribution of the sum is their exact convolution when that stays small, else
``MC_DRAWS`` seeded Monte Carlo draws with the +1 correction. One-sided p-values, both ways.
"""

from __future__ import annotations

import functools
import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.025  # one-sided, each way: the old two-sided 95 % interval's level
MIN_SEEDS = 3
MAX_ENUM_K = 7  # enumerate the k! grid permutations up to k = 7 (5040)
MAX_KEYS = 50_000  # distinct values kept in an exact convolution before Monte Carlo
MC_DRAWS = 20_000
MC_SEED = 20240
_TOL = 1e-9  # float sums of equal terms must count as ties with the observed value
PERMUTATION = "exact within-seed permutation test of the grid"
SIGN_FLIP = "exact sign-flip test over seeds"


@dataclass
class Unit:
    """One independent piece of the statistic: ``observed`` and its null distribution, as
    ``values`` with ``probs`` or, when too large to list, a ``sampler(rng, n)``."""

    observed: float
    values: np.ndarray | None = None
    probs: np.ndarray | None = None
    sampler: Callable[[np.random.Generator, int], np.ndarray] | None = None
    p_max: float = 1.0  # P(the unit reaches its largest value) under the null


@dataclass
class PValues:
    """``p_value``: one-sided in the paper's direction; ``p_opposite``: the other way;
    ``p_min``: the smallest ``p_value`` this design could give; ``method`` names the test."""

    p_value: float
    p_opposite: float
    p_min: float
    method: str


def _compact(values: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keys, inv = np.unique(np.round(values, 10), return_inverse=True)
    return keys, np.bincount(inv.ravel(), weights=probs)


def _exact(values: np.ndarray, weight: float) -> Unit:
    vals, probs = _compact(weight * values, np.full(len(values), 1.0 / len(values)))
    observed = float(weight * values[0])  # row 0 is the identity permutation / no flip
    return Unit(observed, vals, probs, p_max=float(probs[-1]))  # vals ascend: [-1] is the top


def flip_unit(effect: float, weight: float = 1.0) -> Unit:
    """One seed's paired effect (times ``weight``); the null: its sign is a fair coin."""
    return _exact(np.array([effect, -effect]), weight)


def _ranks(ys: Sequence[float]) -> np.ndarray | None:
    """Centred average ranks of ``ys`` (ties share their mean rank); None if all are tied."""
    _, inv, counts = np.unique(np.asarray(ys, dtype=float), return_inverse=True,
                               return_counts=True)
    if len(counts) < 2:
        return None
    r = (np.cumsum(counts) - (counts - 1) / 2)[inv.ravel()]
    return r - r.mean()


@functools.lru_cache(maxsize=MAX_ENUM_K)
def _permutations(k: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(k))))


def spearman(ys: Sequence[float]) -> float | None:
    """Spearman's rho between grid positions 0..k-1 and ``ys`` (average ranks for ties);
    None with fewer than two distinct values."""
    cy = _ranks(ys)
    if cy is None or len(ys) < 2:
        return None
    cx = np.arange(len(ys)) - (len(ys) - 1) / 2
    return float(cx @ cy / math.sqrt((cx @ cx) * (cy @ cy)))


def spearman_block(series: Sequence[Sequence[float]], weights: Sequence[float]) -> Unit | None:
    """The weighted sum of Spearman rhos of several ``series`` on one seed's grid (same length,
    sorted by the axis), all permuted together: series measured on the same seed share its
    samples, so only a joint permutation of the grid keeps their dependence under the null."""
    k = len(series[0])
    cx = np.arange(k) - (k - 1) / 2
    rows = []
    for ys, w in zip(series, weights, strict=True):
        cy = _ranks(ys)
        if cy is not None:
            rows.append(w * cy / math.sqrt((cx @ cx) * (cy @ cy)))
    if not rows or k < 2:
        return None
    cys = np.stack(rows)  # (series, k); statistic(perm) = sum_s cys[s, perm] @ cx
    if k <= MAX_ENUM_K:
        return _exact(cys[:, _permutations(k)].sum(axis=0) @ cx, 1.0)

    def sample(rng: np.random.Generator, n: int) -> np.ndarray:
        perms = np.argsort(rng.random((n, k)), axis=1)
        return cys[:, perms].sum(axis=0) @ cx

    return Unit(float(cys.sum(axis=0) @ cx), sampler=sample, p_max=1.0 / math.factorial(k))


def _convolve(units: Sequence[Unit]) -> tuple[np.ndarray, np.ndarray] | None:
    vals, probs = np.zeros(1), np.ones(1)
    for u in units:
        if u.values is None or len(vals) * len(u.values) > 20 * MAX_KEYS:
            return None
        vals, probs = _compact((vals[:, None] + u.values[None, :]).ravel(),
                               (probs[:, None] * u.probs[None, :]).ravel())
        if len(vals) > MAX_KEYS:
            return None
    return vals, probs


def _draw(u: Unit, rng: np.random.Generator, n: int) -> np.ndarray:
    if u.values is not None:
        return rng.choice(u.values, size=n, p=u.probs / u.probs.sum())
    return u.sampler(rng, n)


def run_test(units: Sequence[Unit], method: str) -> PValues:
    """The one-sided p-values of ``sum(unit.observed)`` under the units' joint null."""
    observed = sum(u.observed for u in units)
    p_min = math.prod(u.p_max for u in units)
    exact = _convolve(units)
    if exact is not None:
        vals, probs = exact
        up = float(probs[vals >= observed - _TOL].sum())
        down = float(probs[vals <= observed + _TOL].sum())
        return PValues(min(up, 1.0), min(down, 1.0), p_min, method)
    rng = np.random.default_rng(MC_SEED)
    draws = sum(_draw(u, rng, MC_DRAWS) for u in units)
    up = (1 + int(np.sum(draws >= observed - _TOL))) / (MC_DRAWS + 1)
    down = (1 + int(np.sum(draws <= observed + _TOL))) / (MC_DRAWS + 1)
    method = method.replace("exact", f"Monte Carlo ({MC_DRAWS} draws)")
    return PValues(up, down, max(p_min, 1 / (MC_DRAWS + 1)), method)


def decide(p_value: float | None, p_opposite: float | None, seeds: int,
           supported: str = "supported", contradicted: str = "contradicted",
           inconclusive: str = "inconclusive") -> str:
    """supported if ``p_value`` <= ALPHA, contradicted if ``p_opposite`` is, else
    inconclusive (also with no test or fewer than ``MIN_SEEDS`` seeds)."""
    if p_value is None or p_opposite is None or seeds < MIN_SEEDS:
        return inconclusive
    return supported if p_value <= ALPHA else contradicted if p_opposite <= ALPHA \
        else inconclusive


def power_note(test: PValues | None, seeds: int) -> str:
    """Why a design cannot be decided, e.g. ``3 seeds cannot reach p <= 0.025 (smallest
    possible p 0.125); at least 6 needed``; empty when it can."""
    if seeds < MIN_SEEDS:
        return f"{seeds} seed{'s' * (seeds != 1)}: a verdict needs at least {MIN_SEEDS}"
    if test is None or test.p_min <= ALPHA:
        return ""
    per_seed = test.p_min ** (1 / seeds)
    need = (f"at least {max(seeds + 1, math.ceil(math.log(ALPHA) / math.log(per_seed)))} "
            "needed" if per_seed < 1 - 1e-12 else "every seed's effect is tied")
    return (f"{seeds} seeds cannot reach p <= {ALPHA:g} (smallest possible p "
            f"{test.p_min:.3g}); {need}")


def mean_interval(values: Sequence[float], bounds: tuple[float, float] = (-math.inf, math.inf),
                  level: float = 0.95) -> tuple[float | None, tuple[float, float] | None]:
    """Mean of ``values`` and its two-sided Student-t interval at ``level``, clipped to
    ``bounds`` (the effect's range, e.g. [-1, 1] for a correlation); None with < 2 values."""
    if not values:
        return None, None
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, None
    from scipy.stats import t

    half = (float(t.ppf(0.5 + level / 2, len(values) - 1)) * statistics.stdev(values)
            / math.sqrt(len(values)))
    return m, (max(bounds[0], m - half), min(bounds[1], m + half))
