"""The two-line rule for every sub-command: bad input -> one stderr line, exit code 2, no work.

Each case runs ``gradleak.cli.main`` in-process; ``{tmp}`` in an argument is the test's folder.
"""

from __future__ import annotations

import sqlite3
import zipfile

import numpy as np
import pytest
import torch

from gradleak.cli import main

TINY = ["model.name=mlp", "model.hidden=[8]", "data.resolution=16", "attack.iterations=1",
        "--quiet"]
ATTACK = ["attack", "--out", "{tmp}/o", *TINY]


def _files(tmp) -> None:
    """Bad files the cases below point at."""
    (tmp / "random.pt").write_bytes(bytes(range(256)) * 4)
    (tmp / "empty.pt").write_bytes(b"")
    torch.save([1, 2, 3], tmp / "list.pt")
    good = {"net.0.weight": torch.zeros(8, 768), "net.0.bias": torch.zeros(8)}
    torch.save({k: v.clone() for k, v in good.items()}, tmp / "other.pt")
    blob = tmp / "full.pt"
    torch.save({"x": torch.zeros(1000)}, blob)
    (tmp / "truncated.pt").write_bytes(blob.read_bytes()[:300])
    (tmp / "a_file").write_text("x")
    (tmp / "bad.yaml").write_text("data: [unclosed\n")
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "empty.yaml").write_text("")
    (tmp / "noscen.yaml").write_text("base: {}\n")
    (tmp / "noname.yaml").write_text("scenarios:\n  - {title: x}\n")
    (tmp / "setlist.yaml").write_text("scenarios:\n  - {name: a, set: [client.lr, 1]}\n")
    (tmp / "escape.yaml").write_text("scenarios:\n  - {name: ../../x}\n")
    (tmp / "dup.yaml").write_text("scenarios:\n  - {name: a}\n  - {name: a}\n")
    (tmp / "badkey.yaml").write_text("scenarios:\n  - {name: a, set: {attack.bogus: 1}}\n")
    sweep = tmp / "corrupt"
    sweep.mkdir()
    (sweep / "results.sqlite").write_bytes(b"definitely not sqlite" * 100)
    _data_files(tmp)
    _stored_plans(tmp)
    foreign = tmp / "foreign"
    foreign.mkdir()
    db = sqlite3.connect(foreign / "results.sqlite")
    db.execute("CREATE TABLE runs (a TEXT)")
    db.commit()
    db.close()


# Finite on the zeros of the shape check, NaN on every real image.
NAN_MODEL = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, num_classes, channels, resolution):
        super().__init__()
        self.fc = nn.Linear(channels * resolution * resolution, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1)) + torch.sqrt(-x.abs().mean())
"""


def _stored_plans(tmp) -> None:
    """Sweep folders with one stored run whose plan file (plans/E-P.yaml) is broken."""
    from gradleak.runs.store import ResultStore

    plans = {"yaml": "spec: [unclosed\n", "list": "- 1\n- 2\n",
             "table": "spec:\n  table: [cols, variant]\n",
             "rows": "spec:\n  table: {cols: variant, rows: [{a: 1}]}\n",
             "runs": "runs: [{seed: 1}]\n"}
    for name, text in plans.items():
        folder = tmp / f"plan_{name}"
        with ResultStore(folder) as store:
            store.put({"run_id": "r0", "experiment": "e", "profile": "quick", "status": "ok",
                       "variant": "O", "seed": 0, "lpips": 0.5})
        (folder / "plans").mkdir()
        (folder / "plans" / "e-quick.yaml").write_text(text)


def _data_files(tmp) -> None:
    """Bad .npz files and ImageFolder trees (issue 26)."""
    with zipfile.ZipFile(tmp / "noheader.npz", "w") as z:  # members without a .npy header
        z.writestr("x.npy", b"garbage")
        z.writestr("y.npy", b"garbage")
    x = np.zeros((4, 8, 8), dtype=np.uint8)
    np.savez(tmp / "objclasses.npz", x=x, y=np.arange(4) % 2,
             classes=np.array(["a", 1], dtype=object))
    np.savez(tmp / "million.npz", x=x, y=np.array([0, 1, 2, 1_000_000]))
    np.savez(tmp / "unnamed.npz", x=x, y=np.array([0, 1, 2, 20_000]))
    np.savez(tmp / "wraps.npz", x=x, y=np.array([0, 1, 2, 2**64 - 1], dtype=np.uint64))
    (tmp / "exits.py").write_text("import sys\nsys.exit(0)\n")
    (tmp / "nan.py").write_text(NAN_MODEL)
    (tmp / "lenet.py").write_text("from torch import nn\n\nclass Net(nn.Module):\n    pass\n")
    from PIL import Image

    for split, classes in (("train", ("a", "b")), ("test", ("a", "c"))):
        for c in classes:
            (tmp / "trees" / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp / "trees" / split / c / "0.png")


NPZ = [*ATTACK, "data.dataset=npz"]
USER = ["attack", "--out", "{tmp}/o", "data.resolution=16", "attack.iterations=1", "--quiet"]
CASES = [
    # data files (issue 26): no .npy header, pickled classes, absurd or wrapping labels
    (NPZ + ["data.root={tmp}/noheader.npz"], "no .npy header"),
    (NPZ + ["data.root={tmp}/objclasses.npz"], "object arrays are not loaded"),
    (NPZ + ["data.root={tmp}/million.npz"], "label 1000000; labels are class indices 0..65534"),
    (NPZ + ["data.root={tmp}/unnamed.npz"], "beyond 10000 classes name them"),
    (NPZ + ["data.root={tmp}/wraps.npz"], "label 18446744073709551615"),
    (ATTACK + ["data.dataset=imagefolder", "data.root={tmp}/trees"], "differ"),
    # user code that exits at import, or whose logits are not finite on real images
    (USER + ["model.name={tmp}/exits.py:Net"], "exits.py' failed: it called sys.exit(0)"),
    (["--plugin", "{tmp}/exits.py", *ATTACK], "exits.py' failed to import: it called sys.exit(0)"),
    (["audit", "--out", "{tmp}/a", "--fail-on-leak", "--budget", "quick",
      "model.name={tmp}/exits.py:Net"], "sys.exit(0)"),
    (USER + ["model.name={tmp}/nan.py:Net"], "nan.py:Net' returns non-finite logits"),
    (["audit", "--out", "{tmp}/a", "--fail-on-leak", "--budget", "quick", "--quiet",
      "model.name={tmp}/nan.py:Net", "data.resolution=16"], "non-finite logits"),
    # attack / config: values that used to pass validation or crash later
    (ATTACK + ["attack.lr=nan"], "attack.lr"),
    (ATTACK + ["client.lr=inf"], "client.lr"),
    (ATTACK + ["defense.noise_multiplier=1e400"], "defense.noise_multiplier"),
    (ATTACK + ["model.dropout=1.5"], "model.dropout"),
    (ATTACK + ["model.kernel_size=40"], "model.kernel_size"),
    (ATTACK + ["model.hidden=[-3]"], "model.hidden"),
    (ATTACK + ["model.hidden=[0]"], "model.hidden"),
    (ATTACK + ["metrics.lpips_threshold=-1"], "metrics.lpips_threshold"),
    (ATTACK + ["fl.fraction=0"], "fl.fraction"),
    (ATTACK + ["fl.fraction=2"], "fl.fraction"),
    (ATTACK + ["data.indices=[3,3]", "data.num_samples=2"], "data.indices"),
    (ATTACK + ["model.hidden=[1"], "model.hidden"),
    (ATTACK + ["seed=-1"], "seed"),
    (ATTACK + ["device=gpu0"], "device"),
    (ATTACK + ["model.checkpoint="], "model.checkpoint"),
    (ATTACK + ["attack.bogus=1"], "attack.bogus"),
    (ATTACK + ["noequals"], "noequals"),
    (ATTACK + ["--bogus-flag"], "--bogus-flag"),
    (ATTACK + ["--config", "{tmp}/bad.yaml"], "not valid YAML"),
    (ATTACK + ["--config", "{tmp}/list.yaml"], "mapping"),
    # checkpoints: corrupt, truncated, empty, foreign
    (ATTACK + ["model.checkpoint={tmp}/random.pt"], "not a torch weights file"),
    (ATTACK + ["model.checkpoint={tmp}/empty.pt"], "not a torch weights file"),
    (ATTACK + ["model.checkpoint={tmp}/truncated.pt"], "not a torch weights file"),
    (ATTACK + ["model.checkpoint={tmp}/list.pt"], "not a state_dict"),
    (ATTACK + ["model.checkpoint={tmp}/other.pt"], "missing keys"),
    (ATTACK + ["model.checkpoint={tmp}/missing.pt"], "does not exist"),
    (ATTACK + ["attack.name=gias", "threat.knows_data_distribution=true",
               "attack.generator={tmp}/random.pt"], "generator file"),
    (ATTACK + ["attack.name=rog", "attack.postprocess={tmp}/list.pt"], "attack.postprocess"),
    # --out
    (["attack", "--out", "", *TINY], "--out is empty"),
    (["attack", "--out", "{tmp}/a_file", *TINY], "not a folder"),
    (["attack", "--out", "{tmp}/a_file/sub", *TINY], "is a file"),
    (["attack", *TINY], "--out"),
    # audit plans
    (["audit", "--plan", "{tmp}/bad.yaml", "--out", "{tmp}/a"], "not valid YAML"),
    (["audit", "--plan", "{tmp}/list.yaml", "--out", "{tmp}/a"], "must be a mapping"),
    (["audit", "--plan", "{tmp}/empty.yaml", "--out", "{tmp}/a"], "empty file"),
    (["audit", "--plan", "{tmp}/noscen.yaml", "--out", "{tmp}/a"], "scenarios"),
    (["audit", "--plan", "{tmp}/noname.yaml", "--out", "{tmp}/a"], "name"),
    (["audit", "--plan", "{tmp}/setlist.yaml", "--out", "{tmp}/a"], "'set' must be a mapping"),
    (["audit", "--plan", "{tmp}/escape.yaml", "--out", "{tmp}/a"], "not a path"),
    (["audit", "--plan", "{tmp}/dup.yaml", "--out", "{tmp}/a"], "used twice"),
    (["audit", "--plan", "{tmp}/badkey.yaml", "--out", "{tmp}/a"], "attack.bogus"),
    (["audit", "--plan", "{tmp}/nope.yaml", "--out", "{tmp}/a"], "does not exist"),
    # config
    (["config", "fl.fraction=0"], "fl.fraction"),
    (["config", "data.holdout=1.5"], "data.holdout: expected a share in [0, 1)"),
    (["config", "data.test_root="], "data.test_root: empty path"),
    (["config", "data.root={tmp}/nonexistent"], "nonexistent' does not exist"),
    (["config", "model.checkpoint={tmp}/nope.pt"], "nope.pt' does not exist"),
    (["config", "model.name={tmp}/lenet.py:Nope"], "lenet.py defines no 'Nope' at its top level "
                                                   "(names there: Net, nn)"),
    (["config", "model.name={tmp}/absent.py:Net"], "absent.py' does not exist"),
    (["audit", "--out", "{tmp}/a", "--max-accuracy-drop", "200"], "<= 100.0, got '200'"),
    (["config", "--config", "{tmp}/nope.yaml"], "does not exist"),
    # igsa
    (["igsa", "--out", "{tmp}/i", "--radius", "nan", *TINY[:3]], "--radius"),
    (["igsa", "--out", "{tmp}/i", "--radius", "-1", *TINY[:3]], "--radius"),
    (["igsa", "--out", "{tmp}/i", "--points", "0", *TINY[:3]], "--points"),
    # theory
    (["theory", "--out", "{tmp}/t", "--lr", "inf"], "--lr"),
    (["theory", "--out", "{tmp}/t", "--samples", "0"], "--samples"),
    # train-generator
    (["train-generator", "--out", "{tmp}/g", "--lr", "nan"], "--lr"),
    (["train-generator", "--out", "{tmp}/g", "--steps", "0"], "--steps"),
    (["train-generator", "--out", "{tmp}/g", "--batch-size", "x"], "--batch-size"),
    (["train-generator", "--out", "{tmp}/g", "attack.lr=1"], "data.*"),
    # stage-study
    (["stage-study", "--out", "{tmp}/s", "--threads", "0"], "--threads"),
    (["stage-study", "--out", "{tmp}/s", "--every", "-2"], "--every"),
    (["stage-study", "--out", "{tmp}/s", "fl.fraction=2"], "fl.fraction"),
    # privacy-utility
    (["privacy-utility", "--out", "{tmp}/p", "--grid", "topk=,"], "--grid"),
    (["privacy-utility", "--out", "{tmp}/p", "--grid", "topk=0.9,,0.95"], "--grid"),
    (["privacy-utility", "--out", "{tmp}/p", "--grid", "topk=2"], "defense.sparsity"),
    (["privacy-utility", "--out", "{tmp}/p", "--defenses", "bogus"], "bogus"),
    (["privacy-utility", "--out", "{tmp}/p", "--threads", "0"], "--threads"),
    # experiment
    (["experiment", "show", "nope"], "nope"),
    (["experiment", "run", "nope", "--out", "{tmp}/e"], "nope"),
    (["experiment", "run", "tab2", "--out", "{tmp}/e", "--jobs", "0"], "--jobs"),
    (["experiment", "run", "tab2", "--out", "{tmp}/e", "--executor", "slurm"], "--executor"),
    (["experiment", "run", "tab2", "--out", "{tmp}/e", "--gpus-per-task", "-1"], "--gpus-per-task"),
    (["experiment", "run", "tab2", "--out", "{tmp}/corrupt"], "results store"),
    # report
    (["report", "{tmp}/corrupt"], "results store"),
    (["report", "{tmp}/foreign"], "results store"),
    (["report", "{tmp}/nowhere"], "results store"),
    (["report", "{tmp}/plan_yaml"], "e-quick.yaml is not valid YAML"),
    (["report", "{tmp}/plan_list"], "holds a list, not a mapping"),
    (["report", "{tmp}/plan_table"], "spec.table must be a dict, got ['cols', 'variant']"),
    (["report", "{tmp}/plan_rows"], "spec.table.rows must be a list of str"),
    (["report", "{tmp}/plan_runs"], "every run needs a run_id"),
    # no sub-command / unknown one
    ([], "command"),
    (["bogus-command"], "bogus-command"),
]


@pytest.mark.parametrize("argv, fragment", CASES, ids=[" ".join(a[:2]) + f" #{i}"
                                                        for i, (a, _) in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, fragment):
    _files(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, err, captured.out[-500:])
    assert len(err.splitlines()) == 1, err
    assert err.startswith("gradleak: error:") and "Traceback" not in err
    assert fragment in err, err


def test_config_checks_a_model_file_without_running_it(tmp_path, capsys):
    marker = tmp_path / "ran"
    file = tmp_path / "net.py"
    file.write_text(f"open({str(marker)!r}, 'w').close()\n"
                    "try:\n    from torch import nn\nexcept ImportError:\n    nn = None\n"
                    "if nn:\n    Net = nn.Linear\n")
    assert main(["config", f"model.name={file}:Net", f"data.root={tmp_path}"]) == 0
    assert f"name: {file}:Net" in capsys.readouterr().out and not marker.exists()
    assert main(["config", f"model.name={file}:open"]) == 2 and not marker.exists()
    (tmp_path / "star.py").write_text("from torch.nn import *\n")  # unknowable without running
    assert main(["config", f"model.name={tmp_path / 'star.py'}:Linear"]) == 0


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_ray_address_where_nothing_listens_fails_fast_in_one_line(tmp_path, capsys, scheme):
    import socket
    import time

    pytest.importorskip("ray")
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    code = main(["experiment", "run", "tab2", "--out", str(tmp_path / "e"), "--executor", "ray",
                 "--address", f"{scheme}127.0.0.1:{port}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and time.monotonic() - start < 30
    assert err.startswith("gradleak: error: no Ray cluster at") and "\n" not in err
    assert not (tmp_path / "e" / "results.sqlite").exists()  # refused before any work
    assert main(["experiment", "run", "tab2", "--out", str(tmp_path / "e"), "--executor", "ray",
                 "--address", "nohostport"]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_distinct_labels_warns_when_impossible(tmp_path, capsys):
    """skimage has fewer classes than 40 samples: labels must repeat, and the user is told."""
    with pytest.warns(UserWarning, match="labels repeat"):
        assert main(["attack", "--out", str(tmp_path / "o"), *TINY, "data.num_samples=40"]) == 0


def test_non_finite_metric_does_not_lose_the_result(tmp_path):
    from gradleak.io import write_json

    write_json(tmp_path / "r.json", {"psnr": float("inf"), "x": [float("nan"), 1.0]})
    assert (tmp_path / "r.json").read_text().count("null") == 2
