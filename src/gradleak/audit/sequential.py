"""Exact binomial bounds and the audit's sequential design (runs in rounds, stop when decided).

The unit of evidence is a run (one victim draw, one client round, one attack); a level's leak
rate ``p`` is the share of runs in which a sample leaked. With ``k`` of ``n`` runs leaked:

* ``leaks`` when the one-sided Clopper-Pearson lower bound of ``p`` is at least the floor;
* ``does not leak`` when the one-sided Clopper-Pearson upper bound is below the floor;

each bound at the per-look level ``1 - alpha_look``. Runs come in rounds of ``round_size`` up to
``max_runs``; a level stops at the first round that decides it. Looking several times inflates
the error rates, so ``alpha_look`` is the largest level whose *exact* overall error rates at
``p = floor`` (the worst case of either error: a monotone rule errs most there) are both at most
``1 - confidence``; :func:`error_rates` computes them by dynamic programming over the looks and
the tests check them by simulation. 0 of 3 runs therefore never says "does not leak": the
exact 95 % upper bound of 0/3 is 63 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))


def _solve(f: object, target: float) -> float:
    """The p in [0, 1] with the decreasing function ``f(p) = target`` (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(mid) > target:  # type: ignore[operator]
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def upper_bound(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson upper bound of ``p`` at level ``1 - alpha`` (1 when n = 0)."""
    if n <= 0 or k >= n:
        return 1.0
    return _solve(lambda p: binom_cdf(k, n, p), alpha)


def lower_bound(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson lower bound of ``p`` at level ``1 - alpha`` (0 when k = 0)."""
    if n <= 0 or k <= 0:
        return 0.0
    # P(X >= k | p) = alpha, i.e. the decreasing P(X <= k - 1 | p) = 1 - alpha
    return _solve(lambda p: binom_cdf(k - 1, n, p), 1.0 - alpha) if k < n else alpha ** (1 / n)


@dataclass(frozen=True)
class Design:
    """A sequential design: looks at ``round_size, 2 * round_size, ... max_runs`` runs."""

    floor: float = 0.2
    confidence: float = 0.95
    round_size: int = 3
    max_runs: int = 18

    @property
    def looks(self) -> list[int]:
        n = list(range(self.round_size, self.max_runs + 1, self.round_size))
        return n if n and n[-1] == self.max_runs else [*n, self.max_runs]

    @property
    def alpha_look(self) -> float:
        return _alpha_look(self.floor, 1.0 - self.confidence, tuple(self.looks))

    def leaks(self, k: int, n: int) -> bool:
        return n > 0 and lower_bound(k, n, self.alpha_look) >= self.floor

    def safe(self, k: int, n: int) -> bool:
        return n > 0 and upper_bound(k, n, self.alpha_look) < self.floor

    def runs_to_safe(self, k: int, n: int) -> int | None:
        """Runs in all (``n`` plus whole rounds) at which ``k`` leaks would be "does not leak" if
        no further run leaked (None beyond ``8 * max_runs``: the floor is out of reach)."""
        steps = range(max(n, self.round_size), 8 * self.max_runs + 1, self.round_size)
        return next((m for m in steps if self.safe(k, m)), None)


def error_rates(floor: float, alpha_look: float, looks: tuple[int, ...]) -> tuple[float, float]:
    """Exact ``(P(says leaks), P(says does not leak))`` at true rate ``p = floor``, for a design
    that stops at the first look whose bound decides (the rule of :class:`Design`)."""
    dist = {0: 1.0}  # P(k leaks so far and still undecided)
    says_leak = says_safe = 0.0
    done = 0
    for n in looks:
        step = n - done
        new: dict[int, float] = {}
        for k, pk in dist.items():
            for j in range(step + 1):
                new[k + j] = new.get(k + j, 0.0) + pk * math.comb(step, j) * floor ** j * (
                    1 - floor) ** (step - j)
        dist = {}
        for k, pk in new.items():
            if lower_bound(k, n, alpha_look) >= floor:
                says_leak += pk
            elif upper_bound(k, n, alpha_look) < floor:
                says_safe += pk
            else:
                dist[k] = pk
        done = n
    return says_leak, says_safe


@lru_cache(maxsize=64)
def _alpha_look(floor: float, alpha: float, looks: tuple[int, ...]) -> float:
    """The largest per-look level (on a grid of 1 % steps of ``alpha``) whose exact overall
    error rates are both at most ``alpha``."""
    for step in range(100, 0, -1):
        a = alpha * step / 100
        if max(error_rates(floor, a, looks)) <= alpha:
            return a
    return alpha / 100
