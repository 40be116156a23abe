"""attack.race: successive halving over the restarts. Keeping every restart reproduces the unraced
run exactly; otherwise the survivors are the unraced restarts' own trajectories, rank first, and
the race spends fewer iterations; bad race settings are one-line config errors."""

from __future__ import annotations

import pytest
import torch

from gradleak.attack_settings import MatchingSettings
from gradleak.attacks.race import kept, race, round_ends
from gradleak.config import load_config
from gradleak.errors import GradleakError
from tests.attacks.engine_cases import make_case

BUDGET = 200


def _run(**options):
    attack, obs = make_case("ig", 0)
    for key, value in {"iterations": BUDGET, "restarts": 4, "race_first": 25,
                       "batch_restarts": "off", **options}.items():
        setattr(attack, key, value)
    return attack(obs, seed=0)


def _same(a, b) -> None:
    assert torch.equal(a.candidates, b.candidates) and torch.equal(a.images, b.images)
    assert a.losses == b.losses and a.iterations_used == b.iterations_used
    assert a.history == b.history


def test_rounds_double_up_to_the_budget_and_the_cut_keeps_a_fraction():
    assert round_ends(MatchingSettings(iterations=200, race_first=25)) == [25, 50, 100, 200]
    assert round_ends(MatchingSettings(iterations=2000)) == [250, 500, 1000, 2000]  # budget / 8
    assert round_ends(MatchingSettings(iterations=10, race_first=50)) == [10]
    assert kept([0, 1, 2, 3], [0.4, 0.1, float("nan"), 0.2], 0.5) == [1, 3]
    assert kept([0, 1, 2], [0.3, 0.2, 0.1], 0.5) == [1, 2]  # ceil(1.5)
    assert kept([0, 1], [0.3, 0.2], 0.01) == [1]  # at least one
    assert kept(list(range(10)), [float(i) for i in range(10)], 0.3) == [0, 1, 2]


@pytest.mark.parametrize("options", [{}, {"batch_restarts": "on"},
                                     {"stop": True, "stop_window": 10, "stop_tolerance": 0.01}])
def test_keeping_every_restart_reproduces_the_unraced_run(options):
    raced = _run(race=True, race_keep=1.0, **options)
    _same(raced, _run(**options))
    assert raced.details["race"]["rounds"] == [25, 50, 100, 200]
    assert raced.details["race"]["survivors"] == [0, 1, 2, 3]


@pytest.mark.parametrize("batch, keep, alive", [("off", 0.5, 1), ("off", 0.75, 3),
                                               ("on", 0.75, 3)])
def test_the_survivors_are_the_unraced_restarts_and_one_of_them_is_returned(batch, keep, alive):
    """keep=best: a survivor's candidate is its unraced one (resumed, never restarted), the
    returned candidate is a survivor's and no survivor has a lower loss. Exact one after another;
    batched, the narrowed stack's smaller vmap sums in another order (test_functional's
    tolerance: the batched and the sequential path agree to 1e-3)."""
    every = _run(race=True, race_keep=1.0, keep="best", batch_restarts=batch)
    raced = _run(race=True, race_keep=keep, keep="best", batch_restarts=batch)
    race = raced.details["race"]
    survivors, owner = race["survivors"], race["restart_of"]
    assert len(survivors) == alive and all(raced.iterations_used[s] == BUDGET for s in survivors)
    assert owner[0] in survivors
    exact = batch == "off"
    unraced_of = {r: i for i, r in enumerate(every.details["race"]["restart_of"])}
    for s in survivors:
        i, j = owner.index(s), unraced_of[s]
        if exact:
            assert torch.equal(raced.candidates[i], every.candidates[j])
            assert raced.losses[i] == every.losses[j]
        else:
            torch.testing.assert_close(raced.candidates[i], every.candidates[j], rtol=0, atol=1e-3)
        assert raced.losses[0] <= raced.losses[i]
    if exact:
        assert torch.equal(raced.images, every.candidates[unraced_of[owner[0]]])


def test_with_keep_last_eliminated_restarts_rank_after_the_survivors():
    rec = _run(race=True, race_keep=0.5)
    race = rec.details["race"]
    alive = len(race["survivors"])
    assert set(race["restart_of"][:alive]) == set(race["survivors"])
    assert sorted(race["restart_of"]) == [0, 1, 2, 3] and rec.candidates.shape[0] == 4
    assert rec.losses[:alive] == sorted(rec.losses[:alive])


@pytest.mark.parametrize("batch", ["off", "on"])
def test_halving_four_restarts_spends_fewer_iterations(batch):
    """Rounds end at 25, 50, 100, 200: 4 run 25, 2 run on to 50, 1 runs on to the budget."""
    rec = _run(race=True, race_keep=0.5, batch_restarts=batch)
    assert sorted(rec.iterations_used) == [25, 25, 50, BUDGET]
    assert sum(rec.iterations_used) < 4 * BUDGET
    assert len(rec.history) == sum(len(range(0, u, 10)) + ((u - 1) % 10 > 0)
                                   for u in rec.iterations_used)


class _Scripted:
    """A stand-in restart whose lowest loss after ``it`` iterations is ``loss(it)`` and which
    stops (attack.stop) after ``stops`` iterations: the race sees only these."""

    def __init__(self, loss, stops=None):
        self.loss, self.stops, self.stop = loss, stops, None
        self.used, self.finished = 0, False

    def advance(self, _bar, until):
        self.used = until if self.stops is None else min(until, self.stops)
        self.lowest = self.loss(self.used)
        self.finished = self.used in (BUDGET, self.stops)
        return self.finished


@pytest.mark.parametrize("fast, winner", [(lambda it: 1 / it, 0), (lambda it: 1 / it ** 2, 1)])
def test_a_stopped_restart_is_finished_and_competes_with_its_lowest_loss(fast, winner):
    """Restart 0 stops at 20 iterations with loss 0.01: it is never advanced again but keeps
    its place at each cut while it ranks there; restart 1 keeps improving (1/it: 0.02 at the
    second cut, beaten by 0.01; 1/it^2: 0.0004, it wins and runs the whole budget)."""
    restarts = [_Scripted(lambda it: 0.01, stops=20), _Scripted(fast),
                _Scripted(lambda it: 0.5), _Scripted(lambda it: 0.9, stops=10)]
    settings = MatchingSettings(iterations=BUDGET, restarts=4, race=True, race_first=25)
    assert race(restarts, None, settings) == [winner]
    assert [r.used for r in restarts] == [20, 50 if winner == 0 else BUDGET, 25, 10]


def test_a_time_budget_still_ends_every_raced_restart():
    rec = _run(race=True, race_keep=0.5, max_seconds=0.0)
    assert rec.iterations_used == [1] * 4


@pytest.mark.parametrize("item, fragment", [
    ("attack.race_keep=0", "bad value '0' for attack.race_keep: expected a fraction in (0, 1]"),
    ("attack.race_keep=1.5", "bad value '1.5' for attack.race_keep: expected a fraction in (0, 1]"),
    ("attack.race_first=0", "bad value '0' for attack.race_first: must be >= 1"),
    ("attack.race=maybe", "bad value 'maybe' for attack.race: expected bool"),
])
def test_bad_race_settings_are_one_line_errors(item, fragment):
    with pytest.raises(GradleakError) as info:
        load_config(None, [item])
    assert fragment in str(info.value) and "\n" not in str(info.value)
