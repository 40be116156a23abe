"""Every command of docs/audit.md runs as written (with tiny sizes added), on the model file the
page shows and a small ImageFolder with a held-out split."""

import json
import shlex
from pathlib import Path

from gradleak.cli import main
from tests.audit.userdata import make_photos

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"
TINY = ["data.resolution=16", "attack.iterations=40", "fl.rounds=1"]


def _blocks(lang: str) -> list[str]:
    return [b.split("```", 1)[0] for b in DOC.read_text().split(f"```{lang}\n")[1:]]


def test_every_command_of_the_walkthrough_runs(tmp_path, monkeypatch):
    (model,) = _blocks("python")
    (tmp_path / "mynet.py").write_text(model)
    make_photos(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    commands = [line for block in _blocks("sh") for line in block.splitlines()
                if line.startswith("gradleak ")]
    assert len(commands) == 4
    for line in commands:
        args = shlex.split(line)[1:] + TINY
        code = main(args)
        if "--fail-on-leak" in args:  # the gate fails closed (docs/audit.md, section 3)
            out = Path(args[args.index("--out") + 1])
            v = json.loads((out / "verdict.json").read_text())
            assert code == {"leaks": 1, "does not leak": 0}.get(v["verdict"], 3)
        else:
            assert code == 0, line
    verdict = json.loads((tmp_path / "audit-sgd" / "verdict.json").read_text())
    assert verdict["setup"]["protocol"] == "fedsgd" and verdict["levels"]
    if verdict["worst_case"] == "leaks":
        assert verdict["recommendation"]["cost"] == "distortion"
