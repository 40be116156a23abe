"""Pre-flight: before a sweep launches anything, every run's config and what its scenario would
refuse are checked, so a grid that cannot run fails in one line naming the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gradleak.cli import main
from gradleak.errors import GradleakError
from gradleak.experiments.catalog import make_plan

BASE = {"data.resolution": 16, "model.name": "mlp", "model.hidden": [8], "attack.iterations": 1}


def _spec(tmp_path: Path, grid: dict, base: dict | None = None) -> str:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({
        "title": "t", "tests": "t", "insight": "t", "kind": "attack", "base": base or BASE,
        "grid": grid, "seeds": [0, 1],
        "profiles": {"quick": {"seeds": [0, 1]}, "paper": {"seeds": [0, 1]}}}))
    return str(path)


CASES = {
    "unknown attack": ({"attack.name": ["ig", "nope"]}, "unknown attack 'nope'; allowed:"),
    "attack needs an ungranted level": ({"attack.name": ["ig", "gias"]},
                                        "set threat.knows_data_distribution=true"),
    "labels not granted": ({"threat.knows_labels": [True, False]}, "set threat.knows_labels=true"),
    "unknown defense": ({"defense.name": ["none", "nope"]}, "unknown defense 'nope'"),
    "unknown model": ({"model.name": ["mlp", "nope"]}, "unknown model 'nope'"),
    "unknown dataset": ({"data.dataset": ["skimage", "nope"]}, "unknown dataset 'nope'"),
    "setting of another attack": ({"attack.bins": [8, 16], "attack.name": ["analytic", "ig"]},
                                  None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_grid_that_cannot_run_fails_in_one_line_before_any_run(tmp_path, capsys, case):
    grid, expected = CASES[case]
    path = _spec(tmp_path, grid)
    if expected is None:  # built-in keys stay valid for every attack: this grid runs
        assert len(make_plan(path, "quick").runs) == 8
        return
    with pytest.raises(GradleakError, match="variant default") as err:
        make_plan(path, "quick")
    assert expected in str(err.value) and "\n" not in str(err.value)
    out = tmp_path / "sweep"
    assert main(["experiment", "run", path, "--out", str(out), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]
    assert not (out / "runs").exists() and not (out / "results.sqlite").exists()


def test_missing_dataset_files_stop_the_sweep_before_its_first_run(tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    path = _spec(tmp_path, {"data.dataset": ["skimage", "imagefolder"]},
                 {**BASE, "data.root": str(missing)})
    assert len(make_plan(path, "quick").runs) == 4  # showing a plan does not read datasets
    out = tmp_path / "sweep"
    assert main(["experiment", "run", path, "--out", str(out), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "imagefolder" in lines[0] and str(missing) in lines[0]
    assert not (out / "runs").exists()  # no run started, not even the skimage ones


def test_a_user_model_file_that_does_not_exist_is_caught_up_front(tmp_path):
    path = _spec(tmp_path, {"attack.tv": [0.0, 1e-4]})
    with pytest.raises(GradleakError, match="does not exist"):
        make_plan(path, "quick", [f"model.name={tmp_path / 'missing.py'}:Net"])
