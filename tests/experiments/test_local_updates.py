"""Thm. 4.2's local-updates sweep through runs/: plan shape, store, resume, Ctrl-C, CSV from rows."""

import csv

import pytest

import gradleak.runs.sweep as sweep
from gradleak.errors import GradleakError
from gradleak.experiments import local_updates as lu
from gradleak.runs.kinds import KINDS
from gradleak.runs.store import ResultStore

TINY = ["model.hidden=[16]"]
SETTINGS = {"attacks": ["ig"], "seeds": [0, 1], "iterations": 3, "overrides": TINY}


def test_plan_one_variant_per_attack_grid_over_u_seeds_innermost():
    plan = lu.local_updates_plan([1, 2], attacks=["analytic", "ig"], seeds=[0, 1], iterations=3,
                                 overrides=TINY)
    assert [(r.variant, r.labels[lu.AXIS], r.seed) for r in plan.runs] == [
        (a, u, s) for a in ("analytic", "ig") for u in (1, 2) for s in (0, 1)]
    assert all(r.kind == "attack" for r in plan.runs)
    cfg = plan.runs[-1].config(resolve=None)
    assert (cfg.attack.name, cfg.attack.tv, cfg.model.hidden, cfg.client.local_epochs) == \
        ("ig", 0.0, [16], 2)
    assert (cfg.client.protocol, cfg.client.batch_size, cfg.data.num_samples) == ("fedavg", 2, 2)
    # the user's overrides win over the grid, as in the old loop
    fixed = lu.local_updates_plan([1, 2], overrides=["client.local_epochs=3"])
    assert {r.config(resolve=None).client.local_epochs for r in fixed.runs} == {3}
    with pytest.raises(GradleakError, match="unknown theory attack"):
        lu.local_updates_plan([1], attacks=["nope"])
    with pytest.raises(GradleakError, match="local updates"):
        lu.local_updates_plan([0])
    with pytest.raises(GradleakError, match="model.hidden"):
        lu.local_updates_plan([1], overrides=["model.hidden=[0]"])


def test_resume_skips_stored_runs_and_csv_matches_the_store(tmp_path, monkeypatch):
    first = lu.run_local_updates(tmp_path, [1, 2], **SETTINGS)
    assert (len(first.ran), len(first.skipped)) == (4, 0)
    assert [(r["attack"], r["U"], r["seeds"]) for r in first.rows] == [("ig", 1, 2), ("ig", 2, 2)]

    with ResultStore(tmp_path) as store:
        stored = store.rows(experiment=lu.EXPERIMENT, status="ok")
    with (tmp_path / "theory.csv").open() as f:
        lines = list(csv.DictReader(f))
    assert list(lines[0]) == list(lu.CSV_COLUMNS)
    for line in lines:
        mine = [r for r in stored if r["client.local_epochs"] == int(line["U"])]
        mse = [r["mse"] for r in mine]
        assert float(line["mse"]) == pytest.approx(sum(mse) / len(mse), rel=1e-12)
        assert float(line["psnr"]) == pytest.approx(sum(r["psnr"] for r in mine) / len(mine))
        assert int(line["seeds"]) == len(mine) == 2
    assert (tmp_path / "theory.png").stat().st_size > 0

    def fail(*_a, **_k):
        raise AssertionError("a stored run was redone")

    monkeypatch.setattr(sweep, "execute", fail)
    again = lu.run_local_updates(tmp_path, [1, 2], **SETTINGS)
    assert (len(again.ran), len(again.skipped)) == (0, 4)
    assert again.rows == first.rows


def test_interrupted_sweep_keeps_finished_runs(tmp_path, monkeypatch):
    real, calls = sweep.execute, []

    def once_then_ctrl_c(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(sweep, "execute", once_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        lu.run_local_updates(tmp_path, [1, 2], **SETTINGS)
    with ResultStore(tmp_path) as store:
        assert len(store.finished()) == 1
    monkeypatch.setattr(sweep, "execute", real)
    resumed = lu.run_local_updates(tmp_path, [1, 2], **SETTINGS)
    assert (len(resumed.ran), len(resumed.skipped)) == (3, 1)


def test_failed_run_raises_with_the_store(tmp_path, monkeypatch):
    def broken(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setitem(KINDS._entries, "attack", broken)
    with pytest.raises(GradleakError, match="4 local-updates runs failed.*boom"):
        lu.run_local_updates(tmp_path, [1, 2], **SETTINGS)


def test_error_grows_with_local_updates(tmp_path):
    """The documented case (MLP, 16 px, N = 2, lr 0.1, ig): one local step is nearly inverted,
    four are not (one seed, 100 iterations: MSE ~3e-4 vs ~5e-3)."""
    rows = lu.run_local_updates(tmp_path, [1, 4], attacks=["ig"], seeds=[0], iterations=100).rows
    assert [r["U"] for r in rows] == [1, 4]
    assert rows[1]["mse"] > 4 * rows[0]["mse"]
