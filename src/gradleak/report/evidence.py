"""What a verdict holds (``Verdict``, ``Part``) and how its status is reached from a test of
the per-seed effects (``report/stats.py``); the rules themselves are in ``report/verdicts.py``."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from gradleak.report.numbers import number
from gradleak.report.stats import (
    SIGN_FLIP,
    PValues,
    Unit,
    flip_unit,
    mean_interval,
    power_note,
    run_test,
    spearman_block,
)
from gradleak.report.stats import decide as _decide

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
INTERVAL = "Student-t 95% interval over seeds"


@dataclass
class Part:
    """The evidence of one series / variant / defense family inside a verdict."""

    name: str
    status: str
    effect: float | None
    ci: tuple[float, float] | None
    seeds: int
    text: str
    p_value: float | None = None
    test: str = ""


@dataclass
class Verdict:
    """``status`` (supported / contradicted / inconclusive) and a one-paragraph ``statement``;
    the evidence: ``effect`` (mean per-seed effect, > 0 = the paper's direction; what it is:
    ``measure``) with its 95 % ``ci`` over ``seeds`` seeds (``interval`` names the method), and
    the same per series or variant in ``parts``; the status comes from ``test``, with one-sided
    ``p_value`` in the paper's direction and ``p_opposite`` the other way."""

    status: str
    statement: str
    effect: float | None = None
    ci: tuple[float, float] | None = None
    seeds: int = 0
    measure: str = ""
    interval: str = INTERVAL
    parts: list[Part] = field(default_factory=list)
    p_value: float | None = None
    p_opposite: float | None = None
    test: str = ""

    @property
    def evidence(self) -> str:
        """One line: seeds, effect, interval and test, e.g. ``5 seeds; mean per-seed Spearman
        rho +0.84 [0.61, 1] (Student-t 95% interval over seeds); one-sided p 0.0012 (exact
        within-seed permutation test of the grid)``."""
        head = f"{self.seeds} seed{'s' * (self.seeds != 1)}; {self.measure or 'no effect measured'}"
        if self.effect is None:
            return head
        p = f"; one-sided p {self.p_value:.2g} ({self.test})" if self.p_value is not None else ""
        if self.ci is not None:
            return (f"{head} {self.effect:+.3g} [{fmt(self.ci[0])}, {fmt(self.ci[1])}] "
                    f"({self.interval}){p}")
        if self.interval != INTERVAL:  # the rule's own kind of evidence (tradeoff)
            return f"{head} {self.effect:.3g} ({self.interval})"
        return f"{head} {self.effect:+.3g} (no interval: fewer than 2 seeds){p}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "evidence": self.evidence}

def fmt(v: float | None) -> str:
    return number(None if v is None else float(v), 3, missing="n/a")

def decide(p_value: float | None, p_opposite: float | None, seeds: int) -> str:
    """supported if ``p_value`` <= ALPHA, contradicted if ``p_opposite`` is, else inconclusive
    (also without a test or with fewer than ``MIN_SEEDS`` seeds)."""
    return _decide(p_value, p_opposite, seeds, SUPPORTED, CONTRADICTED, INCONCLUSIVE)


def _judged(test: PValues | None, seeds: int) -> tuple[str, str]:
    """The status from ``test`` and its text, ``; one-sided p 0.12 (other way 0.9)``, plus, when
    inconclusive, why the design could not decide."""
    if test is None:
        return decide(None, None, seeds), "; no test"
    status = decide(test.p_value, test.p_opposite, seeds)
    note = "" if status != INCONCLUSIVE else power_note(test, seeds)
    return status, (f"; one-sided p {test.p_value:.2g} (other way {test.p_opposite:.2g})"
                    + (f"; {note}" if note else ""))


def part(name: str, per_seed: dict[Any, float], units: list[Unit], method: str, text: str,
         bounds: tuple[float, float]) -> Part:
    """One series' / variant's evidence: its per-seed effects and the test of their mean."""
    effect, ci = mean_interval(list(per_seed.values()), bounds)
    test = run_test(units, method) if units else None
    status, why = _judged(test, len(per_seed))
    ev = (f"{effect:+.3g} [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else
          f"{fmt(effect)} (no interval)")
    n = len(per_seed)
    return Part(name, status, effect, ci, n, f"{text}; effect {ev} over {n} seed{'s' * (n != 1)}"
                f"{why}", test.p_value if test else None, method)


def verdict_of(parts: list[Part], by_seed: list[float], units: list[Unit], method: str, *,
               measure: str, statement: str, bounds: tuple[float, float]) -> Verdict:
    """The verdict over ``parts`` from the per-seed pooled effects ``by_seed`` and the test of
    their mean (``units``)."""
    if not by_seed:
        return Verdict(INCONCLUSIVE, f"{statement}: no comparable runs", measure=measure,
                       parts=parts)
    effect, ci = mean_interval(by_seed, bounds)
    test = run_test(units, method)
    status, why = _judged(test, len(by_seed))
    detail = "; ".join(p.text for p in parts)
    tail = f" (pooled over {len(parts)}{why})" if len(parts) > 1 else ""  # else: as its part
    return Verdict(status, f"{statement}: {detail}{tail}", effect, ci, len(by_seed), measure,
                   parts=parts, p_value=test.p_value, p_opposite=test.p_opposite, test=method)


def pooled(per_part: dict[str, dict[Any, float]], texts: dict[str, str], *, measure: str,
           statement: str, bounds: tuple[float, float] = (-math.inf, math.inf)) -> Verdict:
    """Paired effects: per seed, the mean of the parts' effects; the sign-flip test of their
    mean over seeds decides the status, each part's own test its status."""
    parts = [part(name, seeds, [flip_unit(e, 1 / len(seeds)) for e in seeds.values()],
                  SIGN_FLIP, texts[name], bounds) for name, seeds in per_part.items()]
    by_seed: dict[Any, list[float]] = defaultdict(list)
    for seeds in per_part.values():
        for s, e in seeds.items():
            by_seed[s].append(e)
    means = [statistics.fmean(v) for v in by_seed.values()]
    return verdict_of(parts, means, [flip_unit(m, 1 / len(means)) for m in means], SIGN_FLIP,
                      measure=measure, statement=statement, bounds=bounds)


def blocks(by_part: dict[str, tuple[tuple[float, ...], list[float]]], weight: float
           ) -> list[Unit]:
    """One seed's test units: its series on the same grid permuted together (they share the
    seed's samples); series on different grids (failed runs) as separate units."""
    grids: dict[tuple[float, ...], list[list[float]]] = defaultdict(list)
    for xs, ys in by_part.values():
        grids[xs].append(ys)
    return [u for ys in grids.values()
            if (u := spearman_block(ys, [weight] * len(ys))) is not None]
