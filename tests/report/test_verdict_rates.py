"""The verdict rules' error rates, measured by simulation at the quick profiles' seed and grid
counts: with no effect, "supported" (and "contradicted") at most the nominal one-sided 2.5 %
within simulation error, never above 5 %; with a strong effect and enough seeds, "supported".

The old Student-t interval over per-seed effects failed these: when every seed gave the same
Spearman rho (or paired effect) the interval had zero width, so with 2 grid points and 3 seeds
12.5 % of no-effect sweeps came out "supported"."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradleak.report.verdicts import (
    CONTRADICTED,
    SUPPORTED,
    compare,
    groups,
    reference,
    tradeoff,
    trend,
)

ALPHA = 0.025
SIMS = 1000
# ALPHA plus three binomial standard errors: a correct test exceeds it with probability ~0.1 %.
LIMIT = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / SIMS)


def _rates(make, rule, sims: int = SIMS, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    statuses = [rule(make(rng)).status for _ in range(sims)]
    return statuses.count(SUPPORTED) / sims, statuses.count(CONTRADICTED) / sims


def _trend_rows(rng, grid: int, seeds: int, parts: int, slope: float = 0.0, levels: int = 0):
    """Per seed a shared grid effect (the seed's samples at each grid point, the same for every
    series) plus noise; ``slope`` adds a true trend, ``levels`` > 0 rounds the metric to that
    many steps (ties, as BRR has)."""
    rows = []
    for s in range(seeds):
        shared = rng.normal(size=grid)
        for p in range(parts):
            ys = shared + rng.normal(scale=0.5, size=grid) + slope * np.arange(grid)
            if levels:
                ys = np.round(levels * 1 / (1 + np.exp(-ys))) / levels
            rows += [{"variant": f"V{p}", "x": x, "m": float(y), "seed": s}
                     for x, y in enumerate(ys)]
    return rows


def _trend(rows):
    return trend(rows, metric="m", along="x", direction="increasing")


# (grid points, seeds, series) of the quick profiles' trend verdicts (tab5's is 3 points x 3
# seeds, where the old rule said supported 6.9 % of the time), plus 2 points x 3 seeds (12.5 %).
TREND_DESIGNS = {"tab1": (5, 4, 2), "tab2": (4, 5, 2), "tab5": (3, 3, 1), "fig4 batch": (3, 3, 2),
                 "fig4 resolution": (2, 3, 2), "fig7": (5, 3, 2), "2 points x 3 seeds": (2, 3, 1)}


@pytest.mark.parametrize("design", TREND_DESIGNS)
def test_trend_false_positive_rate_under_no_trend(design):
    grid, seeds, parts = TREND_DESIGNS[design]
    up, down = _rates(lambda rng: _trend_rows(rng, grid, seeds, parts), _trend)
    assert up <= LIMIT and down <= LIMIT, (up, down)
    if design == "tab1":  # 8 units of 5! orders: fine enough for a size near 2.5 %, not ~0
        assert up >= 0.01 and down >= 0.01, (up, down)


def test_trend_false_positive_rate_with_tied_metric():
    # BRR-like: a metric on a few levels, many ties within a seed (tab5's grid and seeds)
    up, down = _rates(lambda rng: _trend_rows(rng, 3, 3, 1, levels=2), _trend)
    assert up <= LIMIT and down <= LIMIT, (up, down)


@pytest.mark.parametrize(("grid", "seeds"), [(5, 3), (3, 3), (2, 6)])
def test_trend_power_with_a_strong_effect_and_enough_seeds(grid, seeds):
    up, _ = _rates(lambda rng: _trend_rows(rng, grid, seeds, 2, slope=10.0), _trend, sims=200)
    assert up >= 0.95


def _flip_signs(rng, seeds: int) -> np.ndarray:
    # Per-seed effects +-c with a fair sign: the paired null in its least favourable form for a
    # t-interval (all seeds agreeing has zero spread), e.g. which of two variants leaks a sample.
    return rng.choice([-1.0, 1.0], size=seeds)


def _compare_rows(rng, seeds: int, effect: float = 0.0):
    rows = []
    for s, sign in enumerate(_flip_signs(rng, seeds)):
        for n in (1, 2, 3, 4):  # tab2's grid of mini-batch counts
            base = rng.uniform(0.1, 0.3)
            d = 0.05 * sign - effect + rng.normal(scale=0.01 if effect else 0.0)
            rows += [{"variant": "W", "lpips": base + d / 2, "seed": s, "labels": {"n": n}},
                     {"variant": "B", "lpips": base - d / 2, "seed": s, "labels": {"n": n}}]
    return rows


def _groups_rows(rng, seeds: int, variants: int, per_group: int):
    rows = []
    for s, sign in enumerate(_flip_signs(rng, seeds)):
        for v in range(variants):
            for i in range(2 * per_group):
                group_gap = 0.1 * sign * (1 if i < per_group else -1)
                rows.append({"variant": f"V{v}", "axis": i, "lpips": 0.3 + group_gap, "seed": s})
    return rows


def _reference_rows(rng, seeds: int, variants: int):
    rows = []
    for s, sign in enumerate(_flip_signs(rng, seeds)):
        rows.append({"variant": "ref", "model.name": "m", "lpips": 0.2, "seed": s})
        rows += [{"variant": f"V{v}", "model.name": "m", "lpips": 0.2 + 0.1 * sign, "seed": s}
                 for v in range(variants)]
    return rows


PAIRED = {
    "tab2 compare (5 seeds)": (lambda rng: _compare_rows(rng, 5),
                               lambda r: compare(r, metric="lpips", better="W", worse="B")),
    "compare at 3 seeds": (lambda rng: _compare_rows(rng, 3),
                           lambda r: compare(r, metric="lpips", better="W", worse="B")),
    "fig5 groups": (lambda rng: _groups_rows(rng, 3, 2, 3),
                    lambda r: groups(r, metric="lpips", axis="axis", worse=[0, 1, 2],
                                     better=[3, 4, 5])),
    "fig6 groups": (lambda rng: _groups_rows(rng, 5, 1, 1),
                    lambda r: groups(r, metric="lpips", axis="axis", worse=[0], better=[1])),
    "tab3 reference": (lambda rng: _reference_rows(rng, 3, 2),
                       lambda r: reference(r, metric="lpips", reference="ref", expect="better")),
    "tab4 reference": (lambda rng: _reference_rows(rng, 4, 9),
                       lambda r: reference(r, metric="lpips", reference="ref", expect="worse")),
}


@pytest.mark.parametrize("design", PAIRED)
def test_paired_rules_false_positive_rate_under_no_effect(design):
    make, rule = PAIRED[design]
    up, down = _rates(make, rule, sims=600)
    assert up <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / 600) and down <= 0.05, (up, down)


def test_paired_power_needs_six_seeds():
    def rule(r):
        return compare(r, metric="lpips", better="W", worse="B")

    six, _ = _rates(lambda rng: _compare_rows(rng, 6, effect=0.2), rule, sims=100)
    assert six == 1.0  # lower LPIPS for W in every seed: p = 1/64
    five, _ = _rates(lambda rng: _compare_rows(rng, 5, effect=0.2), rule, sims=20)
    assert five == 0.0  # p >= 1/32 whatever the data


def _tradeoff_rows(rng, settings: int, seeds: int = 3, lpips: float = 0.1):
    """One family of ``settings`` (fig11's QSGD: 2-4 bits and sign) whose LPIPS is centred on
    the 0.1 leakage line: no setting truly defends."""
    return [{"variant": f"Q {k}", "defense.name": "qsgd", "lpips": lpips + rng.normal(scale=0.05),
             "accuracy_drop": 1.0 + rng.normal(scale=0.3), "seed": s}
            for k in range(settings) for s in range(seeds)]


def test_tradeoff_false_positive_rate_over_a_familys_settings():
    up, _ = _rates(lambda rng: _tradeoff_rows(rng, 4), tradeoff, sims=1000)
    assert up <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / 1000), up


def test_tradeoff_power_with_a_clear_defense():
    up, _ = _rates(lambda rng: _tradeoff_rows(rng, 4, lpips=0.4), tradeoff, sims=100)
    assert up >= 0.95
