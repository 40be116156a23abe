"""The training-stage study (Fig. 7) end to end on a tiny setting, and its resume."""

import csv

import pytest

from gradleak.cli import main
from gradleak.config import load_config
from gradleak.errors import GradleakError
from gradleak.experiments import stage_study as study

TINY = ["fl.clients=4", "fl.fraction=0.5", "fl.rounds=2", "client.protocol=fedavg",
        "client.batch_size=8", "data.resolution=16", "model.name=mlp", "model.hidden=[16]",
        "attack.iterations=5"]


def test_stage_study_writes_rows_and_resumes(tmp_path, monkeypatch):
    assert main(["stage-study", "--out", str(tmp_path), "--every", "1", "--igsa-points", "2",
                 "--quiet", *TINY]) == 0
    cfg = load_config(None, TINY)
    rows = study.stage_study(cfg, tmp_path, every=1, igsa_points=2)  # all stored: nothing reruns
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and r["igsa"] > 0 and r["psnr"] > 0
    assert min(r["igsa_normalised"] for r in rows) == 0.0
    with (tmp_path / "stage_study.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3
    with (tmp_path / "accuracy.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3
    assert (tmp_path / "stage_study.png").stat().st_size > 0
    assert (tmp_path / "results.sqlite").is_file()

    def fail(*_a, **_k):
        raise AssertionError("a finished round was redone")

    import gradleak.fl.server
    import gradleak.runs.sweep as sweep

    monkeypatch.setattr(sweep, "execute", fail)
    monkeypatch.setattr(gradleak.fl.server, "run_federated", fail)
    again = study.stage_study(cfg, tmp_path, every=1, igsa_points=2)
    assert [r["psnr"] for r in again] == pytest.approx([r["psnr"] for r in rows])


def test_every_k_rounds_keeps_the_last():
    assert study.stage_rounds(5, 2) == [0, 2, 4, 5]
    assert study.stage_rounds(4, 2) == [0, 2, 4]


def test_bad_every(tmp_path):
    with pytest.raises(GradleakError, match="--every"):
        study.stage_study(load_config(None, TINY), tmp_path, every=0)
