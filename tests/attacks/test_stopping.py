"""attack.stop / attack.max_seconds: a restart ends at a plateau or when its time is up, never
before its window has passed, and reports the iterations it used."""

from __future__ import annotations

import pytest

from gradleak.attacks.steps import StopRule
from gradleak.errors import GradleakError
from tests.attacks.engine_cases import make_case


def test_a_plateau_is_never_met_before_the_window_has_passed():
    rule = StopRule(tolerance=1e9, window=5, seconds=None)  # any progress counts as a plateau
    met = [rule.plateau(1.0) for _ in range(8)]
    assert met == [False] * 5 + [True] * 3  # the 6th loss is the first with 5 before it


def test_steady_progress_is_not_a_plateau_but_stalling_is():
    rule = StopRule(tolerance=0.01, window=3, seconds=None)
    assert not any(rule.plateau(0.9 ** k) for k in range(50))  # 10 % better every step
    assert [rule.plateau(0.9 ** 49) for _ in range(4)] == [False, False, True, True]


def test_reset_starts_a_new_window_and_nan_is_no_progress():
    rule = StopRule(tolerance=0.0, window=2, seconds=None)
    assert [rule.plateau(x) for x in (1.0, 0.5, float("nan"), float("nan"))] == [False, False, False, True]
    rule.reset()  # the loss at the reset is the new window's base: `window` new losses follow
    assert [rule.plateau(0.5) for _ in range(3)] == [False, True, True]


def _run(case="ig", **options):
    attack, obs = make_case(case, 0)
    attack.iterations = 200
    for key, value in options.items():
        setattr(attack, key, value)
    return attack(obs, seed=0)


def test_stop_ends_a_restart_right_after_its_window_without_decays_left():
    rec = _run(stop=True, stop_tolerance=1e9, stop_window=7, lr_decay=False, restarts=2)
    assert rec.iterations_used == [8, 8] and rec.iterations == 200


def test_a_plateau_brings_each_lr_decay_forward_before_it_stops():
    """Step decay x0.1 at 3/8, 5/8, 7/8: each plateau first takes the next decay (a new window),
    so an always-met plateau stops after 3 decays and 4 windows: 4 * 7 + 1 iterations."""
    rec = _run(stop=True, stop_tolerance=1e9, stop_window=7)
    assert rec.iterations_used == [29]


def test_stop_off_runs_the_full_budget_and_a_tight_tolerance_stops_later():
    assert _run().iterations_used == [200]
    loose = _run(stop=True, stop_tolerance=0.5, stop_window=10).iterations_used[0]
    tight = _run(stop=True, stop_tolerance=0.0, stop_window=10).iterations_used[0]
    assert 11 <= loose <= tight <= 200


def test_a_time_budget_ends_the_restart():
    rec = _run(max_seconds=0.0, restarts=2)
    assert rec.iterations_used == [1, 1]  # budget spent after the first step of each restart


def test_lbfgs_and_rog_stop_at_their_first_plateau():
    assert _run("idlg", stop=True, stop_tolerance=1e9, stop_window=3).iterations_used == [4]
    assert _run("rog", stop=True, stop_tolerance=1e9, stop_window=3).iterations_used == [4]


def test_bad_stop_window_and_batch_mode_are_one_line_errors():
    from gradleak.attacks.optimization import GradientMatchingAttack

    with pytest.raises(GradleakError, match="stop_window"):
        GradientMatchingAttack(stop_window=0)
    with pytest.raises(GradleakError, match="batch_restarts"):
        GradientMatchingAttack(batch_restarts="always")
