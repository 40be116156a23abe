"""Verdict rules with their evidence: per-seed effects with Student-t 95 % intervals over seeds,
and supported / contradicted / inconclusive from an exact one-sided test of their mean (a
permutation of each seed's grid for ``trend``, sign flips over seeds for the paired rules)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradleak.errors import GradleakError
from gradleak.report import stats
from gradleak.report.stats import ALPHA, flip_unit, run_test, spearman_block
from gradleak.report.verdicts import (
    CONTRADICTED,
    INCONCLUSIVE,
    MIN_SEEDS,
    SUPPORTED,
    compare,
    decide,
    groups,
    judge,
    mean_interval,
    reference,
    tradeoff,
    trend,
)

AXIS = "client.local_epochs"


def _trend_rows(curves: dict[int, list[float]], variant: str = "O", xs=(1, 2, 4, 6, 8)):
    return [{"variant": variant, AXIS: x, "lpips": v, "seed": s, "labels": {AXIS: x}}
            for s, ys in curves.items() for x, v in zip(xs, ys, strict=True)]


def test_mean_interval_is_the_student_t_interval():
    m, (lo, hi) = mean_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n), sd = 1
    assert m == 2.0 and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    assert mean_interval([0.5]) == (0.5, None) and mean_interval([]) == (None, None)


def test_decide_needs_a_one_sided_p_at_most_alpha_and_enough_seeds():
    assert ALPHA == 0.025
    assert decide(0.025, 1.0, MIN_SEEDS) == SUPPORTED
    assert decide(1.0, 0.01, MIN_SEEDS) == CONTRADICTED
    assert decide(0.03, 0.97, 10) == INCONCLUSIVE
    assert decide(0.001, 1.0, MIN_SEEDS - 1) == INCONCLUSIVE
    assert decide(None, None, 10) == INCONCLUSIVE


def test_trend_supported_contradicted_and_inconclusive_with_evidence():
    up = {s: [0.02 + 0.01 * s, 0.1, 0.2, 0.22 + 0.005 * s, 0.25] for s in range(4)}
    v = trend(_trend_rows(up), metric="lpips", along=AXIS, direction="increasing")
    assert v.status == SUPPORTED and v.seeds == 4 and v.effect == pytest.approx(1.0)
    assert "Spearman" in v.measure and "4 seeds" in v.evidence and "Student-t" in v.evidence
    assert v.p_value == pytest.approx(120.0 ** -4) and "permutation" in v.evidence  # 4 x 5!
    down = trend(_trend_rows(up), metric="lpips", along=AXIS, direction="decreasing")
    assert down.status == CONTRADICTED and down.effect == pytest.approx(-1.0)
    # Each seed rises, falls or is flat by turns: no consistent trend.
    mixed = {0: [0.1, 0.2, 0.3, 0.4, 0.5], 1: [0.5, 0.4, 0.3, 0.2, 0.1],
             2: [0.1, 0.3, 0.2, 0.5, 0.4], 3: [0.4, 0.5, 0.2, 0.3, 0.1]}
    flat = trend(_trend_rows(mixed), metric="lpips", along=AXIS, direction="increasing")
    assert flat.status == INCONCLUSIVE and flat.ci[0] < 0 < flat.ci[1]
    one = trend(_trend_rows({0: up[0]}), metric="lpips", along=AXIS, direction="increasing")
    assert one.status == INCONCLUSIVE and one.ci is None and "no interval" in one.evidence


def test_one_bad_seed_does_not_flip_a_clear_trend():
    # Issue 15: GIA-L at U=1 had one seed at 0.143, which flipped the old rule's verdict.
    curves = {s: [0.04, 0.06, 0.2, 0.19, 0.23] for s in range(5)}
    curves[2] = [0.143, 0.06, 0.2, 0.19, 0.23]
    v = trend(_trend_rows(curves), metric="lpips", along=AXIS, direction="increasing")
    assert v.status == SUPPORTED and v.ci[0] > 0


def test_trend_pools_series_and_keeps_each_part():
    rows = (_trend_rows({s: [0.1, 0.2, 0.3, 0.4, 0.5] for s in range(3)}, variant="O")
            + _trend_rows({s: [0.5, 0.4, 0.3, 0.2, 0.1] for s in range(3)}, variant="L"))
    v = trend(rows, metric="lpips", along=AXIS, direction="increasing")
    assert {p.name: p.status for p in v.parts} == {"O": SUPPORTED, "L": CONTRADICTED}
    assert v.status == INCONCLUSIVE and v.effect == pytest.approx(0.0)  # +1 and -1 cancel


def _pair_rows(better: list[float], worse: list[float]):
    rows = []
    for s, (a, b) in enumerate(zip(better, worse, strict=True)):
        for x in (1, 2):
            rows += [{"variant": "WST", "lpips": a * x, "seed": s, "labels": {"n": x}},
                     {"variant": "BST", "lpips": b * x, "seed": s, "labels": {"n": x}}]
    return rows


def test_compare_uses_paired_seeds():
    rows = _pair_rows([0.01, 0.02, 0.015, 0.01, 0.02, 0.03], [0.05, 0.08, 0.06, 0.07, 0.05, 0.04])
    v = compare(rows, metric="lpips", better="WST", worse="BST")
    assert v.status == SUPPORTED and v.seeds == 6 and v.effect > 0  # lower LPIPS leaks more
    assert v.p_value == pytest.approx(1 / 64) and v.to_dict()["test"] == v.test == stats.SIGN_FLIP
    assert "12/12 matched runs" in v.statement
    assert compare(rows, metric="lpips", better="BST", worse="WST").status == CONTRADICTED
    # Five seeds all agreeing: p = 1/32 > 0.025, and the statement says why it cannot decide.
    five = compare(_pair_rows([0.01] * 5, [0.05] * 5), metric="lpips", better="WST", worse="BST")
    assert five.status == INCONCLUSIVE and five.p_value == pytest.approx(1 / 32)
    assert "5 seeds cannot reach p <= 0.025 (smallest possible p 0.0312); at least 6" in \
        five.statement
    few = _pair_rows([0.01, 0.02], [0.05, 0.08])
    assert compare(few, metric="lpips", better="WST", worse="BST").status == INCONCLUSIVE
    assert compare(rows, metric="lpips", better="WST", worse="X").status == INCONCLUSIVE


def test_groups_per_variant():
    rows = [{"variant": "L", "data.dataset": d, "lpips": v + 0.01 * s, "seed": s}
            for s in range(6) for d, v in (("skimage", 0.05), ("skimage_gray", 0.3))]
    rows += [{"variant": "O", "data.dataset": d, "lpips": 0.1 + 0.02 * s, "seed": s}
             for s in range(6) for d in ("skimage", "skimage_gray")]
    only_l = groups(rows, metric="lpips", axis="data.dataset", worse=["skimage_gray"],
                    better=["skimage"], variant="L")
    assert only_l.status == SUPPORTED and only_l.effect == pytest.approx(0.25)
    both = groups(rows, metric="lpips", axis="data.dataset", worse=["skimage_gray"],
                  better=["skimage"])
    assert {p.name: p.status for p in both.parts} == {"L": SUPPORTED, "O": INCONCLUSIVE}


def test_reference_signs_each_variant_by_its_expected_direction():
    rows = []
    for s in range(6):
        for name, v in (("original", 30.0 + s), ("cut 1", 12.0 + s), ("cut 2", 14.5 - s)):
            rows.append({"variant": name, "model.name": "m", "psnr": v, "seed": s})
    v = reference(rows, metric="psnr", reference="original", expect="worse")
    assert v.status == SUPPORTED and "2/2 variants" in v.statement
    # per seed: (18 + (15.5 + 2 s)) / 2 PSNR below the original, in the expected direction
    assert v.effect == pytest.approx(sum(18 + 15.5 + 2 * s for s in range(6)) / 12)
    assert reference(rows, metric="psnr", reference="original",
                     expect="better").status == CONTRADICTED
    mixed = reference(rows, metric="psnr", reference="original",
                      expect={"cut 1": "worse", "cut 2": "better"})
    assert {p.name: p.status for p in mixed.parts} == {"cut 1": SUPPORTED, "cut 2": CONTRADICTED}
    assert reference(rows, metric="psnr", reference="nope",
                     expect="worse").status == INCONCLUSIVE


def _pu(family: str, variant: str, lpips: list[float], drop: list[float]):
    return [{"variant": variant, "defense.name": family, "lpips": lp, "accuracy_drop": d,
             "seed": s} for s, (lp, d) in enumerate(zip(lpips, drop, strict=True))]


def test_tradeoff_per_family_intervals():
    q = _pu("qsgd", "Q 2", [0.3, 0.32, 0.28], [1.0, 0.5, 1.5])
    c = _pu("clip", "C 0.1", [0.01, 0.012, 0.011], [0.2, 0.1, 0.3])
    v = tradeoff(q + c, fails=["clip"])
    assert v.status == SUPPORTED and v.effect == 1.0 and v.seeds == 3
    assert tradeoff(q + c).status == CONTRADICTED  # clip does not defend; the default expects it
    # LPIPS straddles the 0.1 line across seeds: undecided, so the family is inconclusive.
    p = _pu("gaussian", "P 0.05", [0.05, 0.3, 0.08], [1.0, 1.0, 1.2])
    mixed = tradeoff(q + p)
    assert {x.name: x.status for x in mixed.parts} == {"qsgd": SUPPORTED, "gaussian": INCONCLUSIVE}
    assert mixed.status == INCONCLUSIVE
    assert tradeoff(q[:2]).status == INCONCLUSIVE  # two seeds: no verdict
    # signSGD counted in the Q family: its failure does not sink quantisation
    sign = _pu("signsgd", "Q sign", [0.4, 0.5, 0.45], [60.0, 55.0, 58.0])
    assert tradeoff(q + sign).status == CONTRADICTED
    grouped = tradeoff(q + sign, families={"signsgd": "qsgd"})
    assert grouped.status == SUPPORTED and [p.name for p in grouped.parts] == ["qsgd"]
    assert "3 seeds; share of 1 families as the paper says 1 (per-family" in grouped.evidence
    assert tradeoff([]).status == INCONCLUSIVE


def test_judge_chains_rules_and_refuses_bad_specs():
    rows = _pair_rows([0.01, 0.02, 0.015, 0.01, 0.02, 0.03], [0.05, 0.08, 0.06, 0.07, 0.05, 0.04])
    spec = {"rule": "compare", "metric": "lpips", "better": "WST", "worse": "BST",
            "also": {"rule": "trend", "metric": "lpips", "along": "labels", "direction": "increasing"}}
    out = judge(rows, spec)
    assert [v.status for v in out] == [SUPPORTED, INCONCLUSIVE]  # labels are not numbers
    assert out[0].to_dict()["evidence"] == out[0].evidence
    with pytest.raises(GradleakError, match="unknown verdict rule 'nope'"):
        judge(rows, {"rule": "nope"})
    with pytest.raises(GradleakError, match="bad parameters for verdict rule 'compare'"):
        judge(rows, {"rule": "compare", "metric": "lpips", "better": "WST", "worse": "BST",
                     "share": 0.5})


def test_identical_rhos_no_longer_give_a_zero_width_verdict():
    # The defect: 3 seeds, 2 grid points, every seed rho = +1 gave the interval [1, 1] and
    # "supported"; 3 seeds x 2 points can at best reach p = 1/8.
    v = trend(_trend_rows({s: [0.1, 0.2] for s in range(3)}, xs=(1, 2)), metric="lpips",
              along=AXIS, direction="increasing")
    assert v.status == INCONCLUSIVE and v.p_value == pytest.approx(1 / 8) and v.ci == (1.0, 1.0)
    assert "3 seeds cannot reach p <= 0.025 (smallest possible p 0.125); at least 6 needed" in \
        v.statement
    six = trend(_trend_rows({s: [0.1, 0.2] for s in range(6)}, xs=(1, 2)), metric="lpips",
                along=AXIS, direction="increasing")
    assert six.status == SUPPORTED and six.p_value == pytest.approx(1 / 64)


def test_trend_p_value_is_the_exact_permutation_tail():
    # 3 grid points, 3 seeds, rhos 1, 1, 0.5 (tab5's LPIPS): P(sum of three rho_3 >= 2.5) = 7/216
    curves = {0: [0.1, 0.2, 0.3], 1: [0.1, 0.2, 0.3], 2: [0.2, 0.1, 0.3]}
    v = trend(_trend_rows(curves, xs=(1, 8, 32)), metric="lpips", along=AXIS,
              direction="increasing")
    assert v.effect == pytest.approx(2.5 / 3) and v.p_value == pytest.approx(7 / 216)
    assert v.status == INCONCLUSIVE and v.p_opposite == pytest.approx(215 / 216)  # all but 1,1,1


def test_series_of_one_seed_are_permuted_together():
    # Two series that mirror each other on every seed: jointly permuted their mean rho is 0
    # under every permutation, so nothing is decided (independent permutations would not see it).
    rows = (_trend_rows({s: [0.1, 0.2, 0.3, 0.4, 0.5] for s in range(3)}, variant="O")
            + _trend_rows({s: [0.5, 0.4, 0.3, 0.2, 0.1] for s in range(3)}, variant="L"))
    v = trend(rows, metric="lpips", along=AXIS, direction="increasing")
    assert v.p_value == pytest.approx(1.0) and v.p_opposite == pytest.approx(1.0)


def test_monte_carlo_agrees_with_the_exact_test(monkeypatch):
    rng = np.random.default_rng(3)
    units = [spearman_block([list(rng.normal(size=5))], [0.25]) for _ in range(4)]
    exact = run_test(units, stats.PERMUTATION)
    flips = run_test([flip_unit(e, 1 / 3) for e in (0.2, 0.1, 0.3)], stats.SIGN_FLIP)
    assert flips.p_value == pytest.approx(1 / 8) and flips.p_min == pytest.approx(1 / 8)
    monkeypatch.setattr(stats, "MAX_KEYS", 1)  # too many values to list: seeded draws
    mc = run_test(units, stats.PERMUTATION)
    assert mc.method.startswith("Monte Carlo") and exact.method.startswith("exact")
    assert mc.p_value == pytest.approx(exact.p_value, abs=0.01)
    assert run_test(units, stats.PERMUTATION) == mc  # seeded: the same report every time
    # A grid too long to enumerate (8! orders) is sampled; the +1 correction bounds p below.
    long = spearman_block([list(range(8))], [1.0])
    big = run_test([long, long], stats.PERMUTATION)
    assert big.p_value == pytest.approx(1 / (stats.MC_DRAWS + 1))
