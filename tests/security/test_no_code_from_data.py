"""No file gradleak reads as data may import or call anything it names (issue 12, item 1).

Each test plants a file that, if its contents were trusted, would create a marker file; it must
end in a one-line error (exit 2) and the marker must not exist.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from gradleak.cli import main

TINY = ["model.name=mlp", "model.hidden=[8]", "data.resolution=16", "attack.iterations=1",
        "--quiet"]


class _Payload:
    """Pickles to ``os.system("touch MARKER")``: the classic code-from-pickle attack."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle_bomb(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": _Payload(marker)}, path)
    return path


def _plain_pickle_bomb(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(_Payload(marker)))
    return path


def _expect_refused(capsys, argv: list[str], marker: Path) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not marker.exists(), "a data file ran code"
    return err


@pytest.mark.parametrize("make", [_pickle_bomb, _plain_pickle_bomb])
@pytest.mark.parametrize("key", ["model.checkpoint", "attack.generator", "attack.postprocess"])
def test_pickled_code_in_weights_files_never_runs(tmp_path, capsys, make, key):
    marker = tmp_path / "marker"
    bomb = make(tmp_path / "bomb.pt", marker)
    extra = {"attack.generator": ["attack.name=gias", "threat.knows_data_distribution=true"],
             "attack.postprocess": ["attack.name=rog"]}.get(key, [])
    err = _expect_refused(capsys, ["attack", "--out", str(tmp_path / "o"), *TINY, *extra,
                                   f"{key}={bomb}"], marker)
    assert str(bomb) in err


def test_postprocess_file_cannot_name_a_class_to_import(tmp_path, capsys):
    """The report's case: a plain dict naming ``os:system`` with the command as kwargs."""
    marker = tmp_path / "marker"
    bomb = tmp_path / "post.pt"
    torch.save({"class": "os:system", "kwargs": {"command": f"touch {marker}"}, "state_dict": {}},
               bomb)
    err = _expect_refused(capsys, ["attack", "--out", str(tmp_path / "o"), *TINY,
                                   "attack.name=rog", f"attack.postprocess={bomb}"], marker)
    assert "'arch'" in err
    torch.save({"arch": "os:system", "kwargs": {"command": f"touch {marker}"}, "state_dict": {}},
               bomb)
    err = _expect_refused(capsys, ["attack", "--out", str(tmp_path / "o"), *TINY,
                                   "attack.name=rog", f"attack.postprocess={bomb}"], marker)
    assert "residual_cnn" in err  # only registered architectures are allowed


def test_torchscript_postprocess_is_refused(tmp_path, capsys):
    marker = tmp_path / "marker"
    script = tmp_path / "post.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(script))
    capsys.readouterr()  # torch.jit deprecation warnings while making the file are not the CLI's
    err = _expect_refused(capsys, ["attack", "--out", str(tmp_path / "o"), *TINY,
                                   "attack.name=rog", f"attack.postprocess={script}"], marker)
    assert "TorchScript" in err


def test_generator_training_checkpoint_with_code_never_runs(tmp_path, capsys):
    marker = tmp_path / "marker"
    out = tmp_path / "gen"
    out.mkdir()
    _pickle_bomb(out / "checkpoint.pt", marker)
    _expect_refused(capsys, ["train-generator", "--out", str(out), "--steps", "1",
                             "--batch-size", "2", "--width", "4", "--latent-dim", "4", "--quiet",
                             "data.resolution=16"], marker)


YAML_BOMB = "!!python/object/apply:os.system [\"touch {marker}\"]\n"


def test_yaml_tags_never_run(tmp_path, capsys):
    marker = tmp_path / "marker"
    config = tmp_path / "c.yaml"
    config.write_text("attack:\n  iterations: " + YAML_BOMB.format(marker=marker))
    _expect_refused(capsys, ["config", "--config", str(config)], marker)
    plan = tmp_path / "plan.yaml"
    plan.write_text("scenarios: " + YAML_BOMB.format(marker=marker))
    _expect_refused(capsys, ["audit", "--plan", str(plan), "--out", str(tmp_path / "a")], marker)
    _expect_refused(capsys, ["config", f"attack.layers={YAML_BOMB.format(marker=marker)}"], marker)
    spec = tmp_path / "exp.yaml"
    spec.write_text("title: " + YAML_BOMB.format(marker=marker))
    _expect_refused(capsys, ["experiment", "show", str(spec)], marker)


def test_results_store_is_only_data(tmp_path, capsys):
    """A store whose JSON columns hold a YAML/pickle payload is parsed as JSON or refused."""
    import sqlite3

    marker = tmp_path / "marker"
    folder = tmp_path / "sweep"
    folder.mkdir()
    db = sqlite3.connect(folder / "results.sqlite")
    db.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, experiment TEXT, status TEXT, "
               "labels TEXT, result TEXT, finished_at TEXT)")
    db.execute("INSERT INTO runs VALUES ('x', 'e', 'ok', ?, ?, 't')",
               (YAML_BOMB.format(marker=marker), pickle.dumps(_Payload(marker)).hex()))
    db.commit()
    db.close()
    _expect_refused(capsys, ["report", str(folder)], marker)


# --- model.name=FILE.py:NAME names code: only from the command line or Python (issue 13) -------

TRAP = """
from pathlib import Path
Path({marker!r}).write_text("imported")
import torch.nn as nn
class Net(nn.Sequential):
    def __init__(self, num_classes, channels, resolution):
        super().__init__(nn.Flatten(), nn.Linear(channels * resolution * resolution, num_classes))
"""


def _trap(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "marker"
    code = tmp_path / "trap.py"
    code.write_text(TRAP.format(marker=str(marker)))
    return code, marker


def _refused_as_code(err: str) -> None:
    assert "names code; pass it on the command line" in err, err


@pytest.mark.parametrize("form", ["{code}:Net", "os.path:join"])
def test_config_file_cannot_name_model_code(tmp_path, capsys, form):
    code, marker = _trap(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  name: {form.format(code=code)}\n")
    for argv in (["config", "--config", str(config)],
                 ["attack", "--config", str(config), "--out", str(tmp_path / "o"), *TINY[1:]]):
        _refused_as_code(_expect_refused(capsys, argv, marker))


def test_experiment_file_cannot_name_model_code(tmp_path, capsys):
    code, marker = _trap(tmp_path)
    body = ('title: t\ntests: t\ninsight: t\nkind: attack\nbase: {{data.resolution: 16, '
            'attack.iterations: 1{extra}}}\n{grid}seeds: [0]\n'
            'profiles: {{quick: {{seeds: [0]}}, paper: {{seeds: [0]}}}}\n')
    for extra, grid in ((f", model.name: {code}:Net", ""),
                        ("", f"grid: {{model.name: [mlp, '{code}:Net']}}\n")):
        spec = tmp_path / "exp.yaml"
        spec.write_text(body.format(extra=extra, grid=grid))
        for argv in (["experiment", "show", str(spec)],
                     ["experiment", "run", str(spec), "--out", str(tmp_path / "s"), "--quiet"]):
            _refused_as_code(_expect_refused(capsys, argv, marker))
    # Typed on the command line, the same model is the user's choice: the plan accepts it.
    from gradleak.experiments.catalog import make_plan

    spec.write_text(body.format(extra="", grid=""))
    plan = make_plan(str(spec), "quick", [f"model.name={code}:Net"])
    assert plan.runs[0].config(resolve=None).model.name == f"{code}:Net"


def test_audit_plan_cannot_name_model_code(tmp_path, capsys):
    code, marker = _trap(tmp_path)
    for where in ("base:\n  model: {name: '%s:Net'}\nscenarios:\n  - {name: a}\n",
                  "scenarios:\n  - name: a\n    set: {model.name: '%s:Net'}\n"):
        plan = tmp_path / "plan.yaml"
        plan.write_text(where % code)
        _refused_as_code(_expect_refused(
            capsys, ["audit", "--plan", str(plan), "--out", str(tmp_path / "a")], marker))


def test_stored_config_cannot_name_model_code(tmp_path):
    from gradleak.config import Config, config_from_dict
    from gradleak.errors import GradleakError

    code, marker = _trap(tmp_path)
    tree = Config().to_dict()
    tree["model"]["name"] = f"{code}:Net"
    with pytest.raises(GradleakError, match="names code"):
        config_from_dict(tree)
    assert not marker.exists()


def test_model_code_typed_on_the_command_line_still_runs(tmp_path, capsys):
    code, marker = _trap(tmp_path)
    assert main(["attack", "--out", str(tmp_path / "o"), f"model.name={code}:Net",
                 "data.resolution=16", "attack.iterations=1", "--quiet"]) == 0
    assert marker.exists()  # the user named it: imported, as documented


def test_a_saved_config_reruns_when_the_user_retypes_the_model(tmp_path):
    """A config file naming code is refused, unless the command line names the model itself (the
    file's value is then never used)."""
    from gradleak.config import load_config
    from gradleak.errors import GradleakError

    code, marker = _trap(tmp_path)
    saved = tmp_path / "config.yaml"
    saved.write_text(f"model:\n  name: {tmp_path / 'other.py'}:Evil\ndata:\n  resolution: 16\n")
    with pytest.raises(GradleakError, match="names code"):
        load_config(saved)
    cfg = load_config(saved, [f"model.name={code}:Net"])
    assert cfg.model.name == f"{code}:Net" and cfg.data.resolution == 16
    assert not marker.exists()  # resolving a config imports nothing
