"""The sequential design's error rates: exact, and checked by simulation."""

import numpy as np
import pytest

from gradleak.audit.sequential import Design, binom_cdf, error_rates, lower_bound, upper_bound


def test_clopper_pearson_bounds_are_exact():
    assert upper_bound(0, 3, 0.05) == pytest.approx(1 - 0.05 ** (1 / 3), abs=1e-9)
    assert upper_bound(0, 16, 0.05) == pytest.approx(0.1707, abs=1e-3)
    assert lower_bound(3, 3, 0.05) == pytest.approx(0.05 ** (1 / 3))
    # the defining equations of the one-sided bounds
    assert binom_cdf(2, 10, upper_bound(2, 10, 0.05)) == pytest.approx(0.05, abs=1e-9)
    assert 1 - binom_cdf(3, 10, lower_bound(4, 10, 0.05)) == pytest.approx(0.05, abs=1e-9)


def test_the_design_never_calls_zero_of_three_safe():
    d = Design()
    assert not d.safe(0, 3) and not d.safe(0, 12) and d.safe(0, 15)
    assert d.leaks(3, 3) and not d.leaks(2, 3) and not d.leaks(1, 3)


@pytest.mark.parametrize("max_runs", [6, 15, 18])
def test_overall_error_rates_hold_exactly_and_by_simulation(max_runs):
    d = Design(max_runs=max_runs)
    a = d.alpha_look
    exact_leak, exact_safe = error_rates(d.floor, a, tuple(d.looks))
    assert exact_leak <= 0.05 and exact_safe <= 0.05
    # Simulate the design at the true rate p = floor (the worst case of both errors).
    rng = np.random.default_rng(0)
    sims = 20000
    leaks = safe = 0
    decide = {n: [(d.leaks(k, n), d.safe(k, n)) for k in range(n + 1)] for n in d.looks}
    outcomes = rng.random((sims, max_runs)) < d.floor
    for row in outcomes:
        for n in d.looks:
            lk, sf = decide[n][int(row[:n].sum())]
            if lk or sf:
                leaks += lk
                safe += sf
                break
    se = 3 * np.sqrt(0.05 * 0.95 / sims)
    assert abs(leaks / sims - exact_leak) < se and abs(safe / sims - exact_safe) < se
    assert leaks / sims <= 0.05 + se and safe / sims <= 0.05 + se


def test_a_leaking_level_is_decided_in_the_first_round():
    d = Design()
    rng = np.random.default_rng(1)
    firsts = [d.leaks(int((rng.random(3) < 0.95).sum()), 3) for _ in range(2000)]
    assert np.mean(firsts) > 0.8  # p = 0.95: 3 of 3 in the first round most of the time
