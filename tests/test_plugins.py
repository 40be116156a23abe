"""Plug-ins: the documented example registers an attack, defense, model and dataset that work from
the CLI, in spawned sweep workers, and never without being named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gradleak import plugins
from gradleak.cli import main
from gradleak.errors import GradleakError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "my_plugin.py"
USE = ["attack.name=flat_guess", "defense.name=round_to_bound", "model.name=tiny_cnn",
       "model.width=4", "data.dataset=stripes", "data.resolution=16", "threat.knows_labels=false",
       "attack.labels=llg"]

EXPERIMENT = """
title: "plug-in sweep"
tests: "plug-ins reach the workers"
insight: "none"
kind: attack
base: {attack.name: flat_guess, defense.name: round_to_bound, model.name: tiny_cnn,
       model.width: 4, data.dataset: stripes, data.resolution: 16, threat.knows_labels: false,
       attack.labels: llg}
variants:
  coarse: {defense.bound: 0.1}
  fine: {defense.bound: 0.001}
seeds: [0]
profiles:
  quick: {seeds: [0]}
  paper: {seeds: [0]}
"""


def test_cli_uses_a_plugin_file_and_refuses_names_without_it(tmp_path, capsys):
    assert main(["--plugin", str(EXAMPLE), "attack", "--out", str(tmp_path / "a"), "--quiet",
                 *USE]) == 0
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["config"]["attack"]["name"] == "flat_guess"
    assert result["scenario"]["dataset"] == "stripes"
    assert result["metrics"]["psnr"] < 18  # a flat guess leaks nothing
    assert main(["attacks", f"--plugin={EXAMPLE}"]) == 0
    assert "flat_guess" in capsys.readouterr().out


def test_plugin_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(plugins.ENV, str(EXAMPLE))
    assert main(["attack", "--out", str(tmp_path / "e"), "--quiet", *USE]) == 0


def test_bad_plugins_are_one_line_errors(tmp_path, capsys):
    for bad in ("no_such_module_xyz", str(tmp_path / "missing.py"), ""):
        assert main(["--plugin", bad, "attacks"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(GradleakError, match="boom"):
        plugins.load_plugin(str(broken))


def test_plugins_reach_spawned_sweep_workers(tmp_path, monkeypatch):
    monkeypatch.delenv(plugins.ENV, raising=False)  # the driver must hand them over itself
    spec = tmp_path / "mine.yaml"
    spec.write_text(EXPERIMENT)
    out = tmp_path / "sweep"
    assert main(["--plugin", str(EXAMPLE), "experiment", "run", str(spec), "--out", str(out),
                 "--jobs", "2", "--quiet"]) == 0
    from gradleak.runs.store import ResultStore

    with ResultStore(out) as store:
        rows = store.rows(status="ok")
    assert sorted(r["variant"] for r in rows) == ["coarse", "fine"]


def test_the_python_example_in_docs_extending_runs(monkeypatch):
    doc = (EXAMPLE.parents[2] / "docs" / "extending.md").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```python\n")[1:]]
    (example,) = [b for b in blocks if "load_plugins([" in b]
    monkeypatch.chdir(EXAMPLE.parents[2])
    exec(compile(example.replace("print(", "_ = ("), "docs/extending.md", "exec"), {})
