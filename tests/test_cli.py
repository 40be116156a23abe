"""End-to-end: the `gradleak attack` contract, bad input handling and reproducibility."""

import json

import pytest

from gradleak.cli import main

TINY = ["model.name=mlp", "model.hidden=[32]", "data.resolution=16", "attack.iterations=15",
        "--quiet"]


def _run(tmp_path, *extra, name="run"):
    out = tmp_path / name
    code = main(["attack", "--out", str(out), *TINY, *extra])
    return code, out


def test_attack_writes_the_result_contract(tmp_path):
    code, out = _run(tmp_path, "data.num_samples=2", "attack.restarts=2")
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert set(result["metrics"]) >= {"mse", "psnr", "ssim", "lpips", "label_accuracy", "brr",
                                      "wsrr"}
    assert set(result["labels"]) >= {"true", "inferred"}
    for key in ("iterations", "seconds", "config", "versions", "seed"):
        assert key in result
    assert result["iterations"] == 15
    assert result["config"]["attack"]["restarts"] == 2
    assert result["thresholds"] == {"psnr": 18.0, "lpips": 0.1}
    assert (out / "reconstruction.png").stat().st_size > 0
    assert (out / "config.yaml").is_file()
    assert not list(out.glob(".*")), "temporary files left behind"


def test_same_seed_same_metrics(tmp_path):
    _, a = _run(tmp_path, name="a")
    _, b = _run(tmp_path, name="b")
    ma = json.loads((a / "result.json").read_text())["metrics"]
    mb = json.loads((b / "result.json").read_text())["metrics"]
    assert ma == mb


@pytest.mark.parametrize("args, fragment", [
    (["attack.bogus=1"], "unknown config key 'attack.bogus'"),
    (["client.protocol=fedprox"], "allowed: fedsgd, fedavg"),
    (["data.dataset=fashion_mnist", "data.root=/nonexistent/fm"], "/nonexistent/fm"),
    (["client.protocol=fedavg", "client.batch_size=4"], "client.batch_size"),
    (["data.num_samples=100000"], "data.num_samples"),
    (["threat.knows_labels=false"], "threat.knows_labels=true"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, fragment):
    code, _ = _run(tmp_path, *args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert fragment in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_listing_commands(capsys):
    assert main(["attacks"]) == 0
    assert "ig" in capsys.readouterr().out
    assert main(["datasets"]) == 0
    assert "skimage" in capsys.readouterr().out
    assert main(["defenses"]) == 0
    assert "none" in capsys.readouterr().out


def test_listings_name_the_text_entries(capsys):
    assert main(["models"]) == 0
    models = capsys.readouterr().out
    assert all(f"\n{n} " in models for n in ("gpt2-tiny", "minilm", "hf"))
    assert main(["datasets"]) == 0
    datasets = capsys.readouterr().out
    assert all(f"\n{n} " in datasets for n in ("wordnet", "personal", "text"))
    assert main(["attacks"]) == 0
    attacks = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert {a[0] for a in attacks if "text" in a} == {"dager", "lamp", "tag", "token-set"}


def test_audit_runs_a_tiny_plan(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "base: {model: {name: mlp, hidden: [16]}, data: {resolution: 16},"
        " attack: {iterations: 5}}\n"
        "scenarios:\n"
        "  - {name: sgd, title: FedSGD, set: {client.protocol: fedsgd}}\n"
        "  - {name: avg, title: FedAvg, set: {client.protocol: fedavg, client.local_epochs: 2}}\n"
    )
    out = tmp_path / "audit"
    assert main(["audit", "--plan", str(plan), "--out", str(out), "--quiet"]) == 0
    html = (out / "index.html").read_text()
    assert "FedSGD" in html and "FedAvg" in html and "data:image/png;base64" in html
    assert (out / "report.md").is_file()
    # A second run resumes: finished scenarios (same config) are kept, not redone.
    before = (out / "sgd" / "result.json").stat().st_mtime_ns
    assert main(["audit", "--plan", str(plan), "--out", str(out), "--quiet"]) == 0
    assert (out / "sgd" / "result.json").stat().st_mtime_ns == before
    assert main(["audit", "--plan", str(plan), "--out", str(out), "--quiet", "--rerun"]) == 0
    assert (out / "sgd" / "result.json").stat().st_mtime_ns != before


def test_python_dash_m_and_a_closed_pipe():
    """``python -m gradleak`` is the same CLI; a reader that leaves early (``| head -1``) is not
    an error: exit 0, no message."""
    import subprocess
    import sys

    done = subprocess.run(f"{sys.executable} -m gradleak experiment list | head -1; "
                          "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from gradleak.experiments.catalog import experiment_names

    first = sorted(experiment_names())[0]  # the list is sorted by name
    assert done.stdout.startswith(first) and "error" not in done.stderr
