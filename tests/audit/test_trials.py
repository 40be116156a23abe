"""Independent trials: no two runs of a level share a victim; the gate fails closed."""

import json

import pytest

from gradleak.audit.ladder import draw_trials, read_setup
from gradleak.cli import main
from gradleak.commands.audit import exit_code


@pytest.mark.parametrize("n", [1, 4])
def test_trials_never_share_a_victim(n):
    setup = read_setup(None, ["data.resolution=16", f"data.num_samples={n}"])
    trials = draw_trials(setup, 15)
    victims = [i for t in trials for i in t.victims]
    assert len(trials) == 15 and len(victims) == 15 * n == len(set(victims))
    assert [t.seed for t in trials] == list(range(15))
    if n == 1:  # the whole photos come first: ten distinct photos before any crop
        assert set(victims[:10]) == set(setup.dataset.preferred_indices)


def test_fixed_indices_are_said_to_be_no_independent_draw():
    setup = read_setup(None, ["data.resolution=16", "data.num_samples=1", "data.indices=[3]"])
    trials = draw_trials(setup, 3)
    assert all(t.victims is None and t.keys() == {} for t in trials)
    assert "not independent victim draws" in setup.trials_note()


def test_trials_stop_when_the_data_runs_out():
    setup = read_setup(None, ["data.resolution=16", "data.num_samples=200"])
    assert len(draw_trials(setup, 15)) == len(setup.dataset) // 200


@pytest.mark.parametrize("verdict, failed, fail_on_leak, allow, code", [
    ("leaks", 0, True, False, 1),
    ("inconclusive", 0, True, False, 3),
    ("inconclusive", 0, True, True, 0),
    ("inconclusive", 0, False, False, 0),
    ("does not leak", 0, True, False, 0),
    ("does not leak", 2, False, False, 2),
    ("leaks", 1, True, False, 2),
])
def test_the_gate_fails_closed(verdict, failed, fail_on_leak, allow, code):
    v = {"verdict": verdict, "fails": verdict == "leaks", "failed_runs": failed}
    assert exit_code(v, fail_on_leak=fail_on_leak, allow_inconclusive=allow) == code


BROKEN = '''
import torch.nn as nn


class Broken(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(3 * 16 * 16, num_classes)

    def forward(self, x):
        if x.requires_grad:  # the attack's dummy images: every run fails, the setup check passes
            raise RuntimeError("this model cannot be attacked")
        return self.fc(x.flatten(1))
'''


def test_an_audit_whose_runs_all_failed_exits_2(tmp_path, capsys):
    (tmp_path / "broken.py").write_text(BROKEN)
    out = tmp_path / "out"
    code = main(["audit", "--out", str(out), "--budget", "quick", "--quiet", "--no-recommend",
                 "--max-seeds", "3", f"model.name={tmp_path / 'broken.py'}:Broken",
                 "data.resolution=16", "attack.iterations=10", "--fail-on-leak",
                 "--allow-inconclusive"])
    assert code == 2
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["failed_runs"] > 0 and verdict["verdict"] == "inconclusive"
    assert all(lv["reason"].startswith(("no finished run", "not run"))
               for lv in verdict["levels"])
    assert "runs failed" in capsys.readouterr().out
