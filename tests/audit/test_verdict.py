"""The audit's verdict rule on exact cases (gradleak.audit.verdict)."""

import pytest

from gradleak.audit.verdict import (
    INCONCLUSIVE,
    LEAKS,
    SAFE,
    RunEvidence,
    VerdictRule,
    best_sample,
    combine,
    converged,
    level_verdict,
    wilson,
)
from gradleak.metrics import METRICS

RULE = VerdictRule()
T = {"psnr": METRICS["psnr"].threshold, "lpips": METRICS["lpips"].threshold}
FLAT = [1.0] * 20  # a loss history that stopped falling


def run(seed, psnr, lpips, history=FLAT, iterations=200):
    return RunEvidence(seed=seed, psnr=psnr, lpips=lpips, thresholds=T, iterations=iterations,
                       iterations_used=[iterations], history=history)


def test_all_samples_pass_both_thresholds_leaks():
    out = level_verdict([run(s, [40.0, 35.0], [0.01, 0.02]) for s in range(3)], RULE)
    assert out["verdict"] == LEAKS
    assert out["at_risk_share"] == 1.0 and out["leaked_share"] == 1.0
    assert out["samples"] == 6 and out["seeds"] == 3


def test_no_sample_at_risk_does_not_leak():
    out = level_verdict([run(s, [8.0], [0.5]) for s in range(3)], RULE)
    assert out["verdict"] == SAFE
    assert out["at_risk_share"] == 0.0 and out["leaked_share"] == 0.0


def test_disagreeing_seeds_are_inconclusive_and_say_what_decides():
    runs = [run(0, [40.0], [0.01]), run(1, [8.0], [0.5]), run(2, [8.0], [0.5])]
    out = level_verdict(runs, RULE)
    assert out["verdict"] == INCONCLUSIVE
    assert "seeds disagree" in out["reason"]
    assert "--seeds" in out["suggest"]


def test_at_risk_is_either_threshold_and_leaked_is_both():
    # PSNR passes alone; LPIPS passes alone: both at risk, neither leaked.
    out = level_verdict([run(s, [20.0, 10.0], [0.5, 0.05]) for s in range(3)], RULE)
    assert out["at_risk_share"] == 1.0 and out["leaked_share"] == 0.0
    assert out["verdict"] == LEAKS


def test_thresholds_come_from_the_run():
    strict = {"psnr": 50.0, "lpips": 0.001}
    runs = [RunEvidence(seed=s, psnr=[40.0], lpips=[0.01], thresholds=strict, history=FLAT)
            for s in range(3)]
    assert level_verdict(runs, RULE)["verdict"] == SAFE


def test_an_attack_still_improving_is_inconclusive_with_more_iterations():
    falling = [1.0 - 0.04 * i for i in range(20)]
    out = level_verdict([run(s, [8.0], [0.5], history=falling, iterations=300)
                         for s in range(3)], RULE)
    assert out["verdict"] == INCONCLUSIVE
    assert "attack.iterations=600" in out["suggest"]
    assert out["converged"] is False


def test_too_few_trials_are_inconclusive():
    out = level_verdict([run(0, [8.0], [0.5])], RULE)
    assert out["verdict"] == INCONCLUSIVE and "--seeds 3" in out["suggest"]


def test_without_lpips_nothing_is_called_safe():
    out = level_verdict([run(s, [8.0], None) for s in range(3)], RULE)
    assert out["verdict"] == INCONCLUSIVE and out["leaked_share"] is None


def test_wilson_interval():
    lo, hi = wilson(3, 3)
    assert lo == pytest.approx(0.4385, abs=1e-3) and hi == 1.0
    lo, hi = wilson(0, 3)
    assert lo == 0.0 and hi == pytest.approx(0.5615, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)


def test_convergence_reads_the_best_restart_and_early_stops():
    assert converged(RunEvidence(0, [], [], T), 0.05)  # closed-form attack: no history
    # Iterations 0, 10, ..., 90 and 99 are recorded: 11 entries per restart of 100.
    two = [5.0] * 11 + [1.0 - 0.05 * i for i in range(11)]  # restart 2 still falling
    assert not converged(RunEvidence(0, [], [], T, iterations=100, iterations_used=[100, 100],
                                     history=two), 0.05)
    flat_best = [1.0 - 0.05 * i for i in range(11)] + [0.1] * 11  # restart 2 best and flat
    assert converged(RunEvidence(0, [], [], T, iterations=100, iterations_used=[100, 100],
                                 history=flat_best), 0.05)
    stopped = RunEvidence(0, [], [], T, iterations=100, iterations_used=[100, 100], history=two,
                          plateau_stop=True)
    stopped.iterations_used = [40, 100]
    stopped.history = two[:5] + two[11:]
    assert converged(stopped, 0.05)
    stopped.plateau_stop = False  # ended by attack.max_seconds: the loss decides
    assert not converged(stopped, 0.05)


def test_combine_and_best_sample():
    assert combine([SAFE, LEAKS]) == LEAKS
    assert combine([SAFE, SAFE]) == SAFE
    assert combine([SAFE, INCONCLUSIVE]) == INCONCLUSIVE
    best = best_sample([run(0, [10.0, 30.0], [0.4, 0.02]), run(1, [12.0], [0.3])])
    assert best["seed"] == 0 and best["sample"] == 1
