"""The audit's verdict rule on exact cases (gradleak.audit.verdict): runs are the trials, the leak
criterion is the stored one, "does not leak" needs an upper bound below the floor."""

import math

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
    merge,
    wilson,
)
from gradleak.metrics import METRICS

RULE = VerdictRule()
T = {"psnr": METRICS["psnr"].threshold, "lpips": METRICS["lpips"].threshold}
FLAT = [1.0] * 20  # a loss history that stopped falling


def run(seed, psnr, lpips, leaked=None, history=FLAT, iterations=200):
    if leaked is None and lpips is not None:  # the thresholds alone, for cases without baselines
        leaked = [p >= T["psnr"] and lp <= T["lpips"] for p, lp in zip(psnr, lpips, strict=True)]
    return RunEvidence(seed=seed, psnr=psnr, lpips=lpips, thresholds=T, iterations=iterations,
                       iterations_used=[iterations], history=history, leaked=leaked,
                       victims=[seed])


def test_three_of_three_leaking_runs_leak():
    out = level_verdict([run(s, [40.0, 35.0], [0.01, 0.02]) for s in range(3)], RULE)
    assert out["verdict"] == LEAKS
    assert out["runs"] == 3 and out["runs_leaked"] == 3 and out["run_leak_rate"] == 1.0
    assert out["leaked_share"] == 1.0 and out["samples"] == 6 and out["seeds"] == 3
    assert out["bound"]["lower"] == pytest.approx(0.05 ** (1 / 3))  # Clopper-Pearson, k = n


def test_zero_of_three_is_inconclusive_with_its_bound():
    out = level_verdict([run(s, [8.0], [0.5]) for s in range(3)], RULE, more=True)
    assert out["verdict"] == INCONCLUSIVE
    assert out["bound"]["upper"] == pytest.approx(1 - 0.05 ** (1 / 3), abs=1e-6)  # 63 %
    assert "no leak in 3 runs (upper bound 63%" in out["reason"]
    assert out["continue"] is True and "--max-seeds 15" in out["suggest"]


def test_zero_of_fifteen_converged_runs_does_not_leak():
    out = level_verdict([run(s, [8.0], [0.5]) for s in range(15)], RULE)
    assert out["verdict"] == SAFE
    assert out["bound"]["upper"] < RULE.min_share
    assert "no leak in 15 runs" in out["reason"]


def test_samples_of_one_run_are_not_independent_trials():
    # One run with 12 leaked samples and two clean runs: one lucky seed cannot make it leak.
    runs = [run(0, [40.0] * 12, [0.01] * 12), run(1, [8.0] * 12, [0.5] * 12),
            run(2, [8.0] * 12, [0.5] * 12)]
    out = level_verdict(runs, RULE)
    assert out["verdict"] == INCONCLUSIVE and out["runs_leaked"] == 1
    assert out["leaked_share"] == pytest.approx(1 / 3)


def test_passing_one_threshold_or_not_beating_a_baseline_is_not_a_leak():
    # PSNR passes alone (a flat image can), LPIPS passes alone, both pass but a baseline is as
    # good: at risk by description, never leaked.
    runs = [run(s, [20.0, 10.0, 30.0], [0.5, 0.05, 0.05], leaked=[False, False, False])
            for s in range(15)]
    out = level_verdict(runs, RULE)
    assert out["at_risk_share"] == 1.0 and out["leaked_share"] == 0.0
    assert out["verdict"] == SAFE


def test_an_attack_still_improving_is_inconclusive_with_more_iterations():
    falling = [1.0 - 0.04 * i for i in range(20)]
    out = level_verdict([run(s, [8.0], [0.5], history=falling, iterations=300)
                         for s in range(15)], RULE, more=True)
    assert out["verdict"] == INCONCLUSIVE
    assert "attack.iterations=600" in out["suggest"]
    assert out["converged"] is False and out["continue"] is False  # more runs cannot help


def test_without_lpips_nothing_is_called_safe():
    out = level_verdict([run(s, [8.0], None) for s in range(15)], RULE)
    assert out["verdict"] == INCONCLUSIVE and out["leaked_share"] is None
    assert out["runs_undecidable"] == 15


def test_no_finished_run_is_inconclusive():
    assert level_verdict([], RULE)["reason"] == "no finished run"


def test_wilson_interval():
    lo, hi = wilson(3, 3)
    assert lo == pytest.approx(0.4385, abs=1e-3) and hi == 1.0
    assert wilson(0, 0) == (0.0, 1.0)


def _schedule_history(decay_at: float, used: int = 1000, rate: float = 0.5) -> list[float]:
    """A loss still falling geometrically (``exp(-rate * t / T)``) until ``decay_at`` of the run,
    where the last x0.1 decay all but stops it: more iterations would still help."""
    its = [i for i in range(used) if i % 10 == 0 or i == used - 1]
    return [math.exp(-rate * min(i, decay_at * used) / used) for i in its]


def test_the_schedule_cannot_fake_convergence():
    history = _schedule_history(7 / 8)  # falls up to the final x0.1, flat after it
    annealed = RunEvidence(0, [], [], T, iterations=1000, iterations_used=[1000],
                           history=history, lr_decay=True)
    assert not converged(annealed, 0.05)
    annealed.lr_decay = False  # the old window (last fifth, decay inside): fooled
    assert converged(annealed, 0.05)
    settled = RunEvidence(0, [], [], T, iterations=1000, iterations_used=[1000],
                          history=_schedule_history(0.1, rate=50.0), lr_decay=True)
    assert converged(settled, 0.05)  # at its floor long before the first decay


def test_convergence_reads_the_best_restart_and_early_stops():
    assert converged(RunEvidence(0, [], [], T), 0.05)  # closed-form attack: no history
    two = [5.0] * 11 + [1.0 - 0.05 * i for i in range(11)]  # restart 2 still falling
    assert not converged(RunEvidence(0, [], [], T, iterations=100, iterations_used=[100, 100],
                                     history=two), 0.05)
    flat_best = [1.0 - 0.05 * i for i in range(11)] + [0.1] * 11
    assert converged(RunEvidence(0, [], [], T, iterations=100, iterations_used=[100, 100],
                                 history=flat_best), 0.05)
    stopped = RunEvidence(0, [], [], T, iterations=100, iterations_used=[40, 100],
                          history=two[:5] + two[11:], plateau_stop=True)
    assert converged(stopped, 0.05)
    stopped.plateau_stop = False  # ended by attack.max_seconds: the loss decides
    assert not converged(stopped, 0.05)
    # Racing: restart 1 was eliminated at 40, the best (restart 2) ran to the end still falling.
    raced = RunEvidence(0, [], [], T, iterations=100, iterations_used=[40, 100],
                        history=two[:5] + two[11:], plateau_stop=True, raced=True)
    assert not converged(raced, 0.05)
    settled = RunEvidence(0, [], [], T, iterations=100, iterations_used=[100, 40],
                          history=[5.0] * 11 + two[11:16], plateau_stop=True, raced=True)
    assert converged(settled, 0.05)  # the best restart itself ended early: its plateau


def test_merge_takes_the_strongest_attacker_per_trial():
    plain = run(0, [10.0, 30.0], [0.4, 0.05], leaked=[False, True])
    adaptive = run(0, [20.0, 12.0], [0.3, 0.3], leaked=[False, False])
    m = merge([plain, adaptive])
    assert m.psnr == [20.0, 30.0] and m.lpips == [0.3, 0.05] and m.leaked == [False, True]
    assert merge([adaptive, None]).leaked is None  # a missing attacker: undecidable ...
    assert merge([plain, None]).run_leaked is True  # ... unless another one leaked


def test_combine_and_best_sample():
    assert combine([SAFE, LEAKS]) == LEAKS
    assert combine([SAFE, SAFE]) == SAFE
    assert combine([SAFE, INCONCLUSIVE]) == INCONCLUSIVE
    best = best_sample([run(0, [10.0, 30.0], [0.4, 0.02]), run(1, [12.0], [0.3])])
    assert best["seed"] == 0 and best["sample"] == 1


def test_a_real_attack_that_doubling_improves_is_not_converged():
    from gradleak.config import load_config
    from gradleak.scenario import Scenario

    def attack(iterations):
        cfg = load_config(None, ["data.resolution=16", "data.num_samples=1", "model.name=convnet",
                                 "model.width=16", f"attack.iterations={iterations}",
                                 "attack.restarts=1", "attack.tv=1e-4", "seed=1"])
        r = Scenario.from_config(cfg).run().result
        return r, RunEvidence(seed=1, psnr=r["per_sample"]["psnr"], lpips=None, thresholds=T,
                              iterations=iterations, iterations_used=r["iterations_used"],
                              history=r["loss_history"], lr_decay=cfg.attack.lr_decay)

    short, evidence = attack(100)
    longer, _ = attack(200)
    assert longer["metrics"]["psnr"] > short["metrics"]["psnr"] + 0.5  # doubling clearly helps
    assert not converged(evidence, RULE.converged_gain)
