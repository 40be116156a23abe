"""Acceptance: `gradleak audit` on a user's own model file, ImageFolder with a held-out split and
client (issue 13): verdict.json, the report, the recommendation and --fail-on-leak."""

import json

import pytest

from gradleak.cli import main
from tests.audit.userdata import MODEL, make_photos


@pytest.fixture(scope="module")
def user_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    (root / "mynet.py").write_text(MODEL)
    make_photos(root / "photos")
    return root, [f"model.name={root / 'mynet.py'}:SmallCNN", "data.dataset=imagefolder",
                  f"data.root={root / 'photos' / 'train'}",
                  f"data.test_root={root / 'photos' / 'test'}", "data.resolution=16"]


LEVEL_KEYS = {"level", "title", "server", "verdict", "at_risk_share", "leaked_share", "seeds",
              "samples", "best", "reason"}


def _audit(out, setup, *extra):
    return main(["audit", "--out", str(out), "--budget", "quick", "--seeds", "3", "--quiet",
                 *setup, *extra])


def test_adam_client_with_augmentation(user_setup, tmp_path):
    _, setup = user_setup
    out = tmp_path / "adam"
    code = _audit(out, setup, "client.protocol=fedavg", "client.optimizer=adam",
                  "client.lr=0.001", "client.augment=flip", "attack.iterations=100",
                  "--fail-on-leak", "--max-seeds", "3")
    verdict = json.loads((out / "verdict.json").read_text())
    # The gate fails closed: 1 on a leak, 3 when undecided (3 runs can never show "does not leak").
    assert verdict["verdict"] != "does not leak"
    assert code == (1 if verdict["verdict"] == "leaks" else 3)
    assert verdict["verdict"] in ("leaks", "does not leak", "inconclusive")
    assert verdict["setup"]["optimizer"] == "adam" and verdict["setup"]["batchnorm"] is True
    levels = {lv["level"]: lv for lv in verdict["levels"]}
    assert set(levels) == {0, 1, 2, 3, 4, 5}
    for lv in levels.values():
        assert set(lv) >= LEVEL_KEYS
    assert levels[2]["verdict"] == "not run" and "train-generator" in levels[2]["reason"]
    victims = verdict["trials"]["victims"]
    assert len({i for v in victims.values() for i in v}) == len(victims) == 3  # no shared victim
    for n in (0, 1, 3, 4):  # FedAvg: the WST level runs; BatchNorm: so does level 4
        assert levels[n]["seeds"] == levels[n]["runs"] == 3 and levels[n]["samples"] == 3
        assert levels[n]["victims_distinct"] is True
        assert (out / levels[n]["best"]["image"]).is_file()
    assert "detectable" in levels[5]["server"]
    assert len(verdict["config_digest"]) == 16
    md = (out / "report.md").read_text()
    assert md.startswith(f"# gradleak audit: {verdict['verdict']}")
    assert "data:image/png;base64" in (out / "index.html").read_text()


LEAKY = ["model.name=mlp", "model.hidden=[32]", "data.resolution=16", "client.protocol=fedsgd",
         "attack.iterations=150", "fl.rounds=2", "--max-seeds", "6"]


def test_a_leaking_setup_gets_a_recommendation_and_fails(tmp_path, capsys):
    out = tmp_path / "sgd"
    code = main(["audit", "--out", str(out), "--budget", "quick", "--quiet", *LEAKY,
                 "--fail-on-leak"])
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["verdict"] == "leaks" and verdict["fails"] is True
    assert code == 1
    assert verdict["malicious_reference"] == "leaks" and "malicious" not in verdict["summary"]
    assert "150 iterations" in verdict["claim"]
    levels = {lv["level"]: lv for lv in verdict["levels"]}
    assert levels[0]["rounds"] == 1 and levels[0]["runs"] == 3  # decided in the first round
    rec = verdict["recommendation"]
    # 6 runs can never show "does not leak" (the upper bound of 0 of 6 is 39 %): nothing
    # qualifies, and the report says what was measured.
    assert rec["status"] == "none qualifies"
    assert rec["cost"] == "accuracy_drop" and rec["max_accuracy_drop"] == 2.0
    assert rec["accuracy_without_defense"] is not None
    assert {p["defense"] for p in rec["settings"]} == {"qsgd", "signsgd", "topk", "clip",
                                                      "gaussian", "dpsgd", "soteria", "outpost",
                                                      "precode"}
    # one victim sample: nothing to mix (the reason is in the verdict)
    assert set(rec["skipped"]) == {"mixup", "instahide"}
    assert "fewer than client.mix_k" in rec["skipped"]["mixup"]
    assert any(p["defense"] == "precode" for p in rec["settings"])
    for p in rec["settings"]:  # a heuristic the plain attack did not reject met its breaker
        if p["defense"] in {"soteria", "outpost", "precode"} and not p["leaked_by"][
                p["attackers"][0]]:
            assert any(a.endswith("+adaptive") for a in p["attackers"]), p["key"]
        assert bool(p["broken_by"]) == bool(p["broken_by_attack"])
    shown = [p for p in rec["settings"] if p["defense"] == "precode" and p["broken_by"]]
    assert all(p["broken_by_attack"] == ["precode-analytic"] for p in shown)
    for p in rec["settings"]:  # DP-SGD's utility trainings report their epsilon, no other's
        assert (p.get("epsilon") is not None) == (p["defense"] == "dpsgd" and p["runs_leaked"] == 0)
    assert {"L0-basic", "L1-priors"} <= set(rec["attackers"])  # every leaking level
    assert any(a.endswith("+adaptive") for a in rec["attackers"])  # and the adaptive attack
    for p in rec["settings"]:
        assert p["verdict"] != "does not leak" and p["runs"] >= 1
        if p["runs_leaked"] == 0:  # passed the screen: utility over 3 paired trainings
            assert p["pairs"] == 3 and p["resolved"] is True
            assert p["resolution_points"] == pytest.approx(100 / 160)
            lo, hi = p["accuracy_drop_interval"]
            assert lo <= p["accuracy_drop"] <= hi
    layers = verdict["vulnerable_layers"]
    assert 1 <= len(layers["layers"]) <= 4 and "not measured" in layers["defend_only_these"]
    md = (out / "report.md").read_text()
    assert "## Recommendation" in md and "Audited: model mlp" in md and "lr 0.1" in md
    for p in rec["settings"]:  # every DP-SGD setting says its ε, or why it has none
        if p["defense"] == "dpsgd":
            said = (f"{p['key']}: client-level DP-SGD with ε = {p['epsilon']:.3g}"
                    if p["epsilon"] is not None else f"{p['key']}: ε not computed")
            assert said in md, p["key"]
    st = verdict["setup"]  # self-describing: what exactly was audited
    assert st["model_class"] and st["parameters"] > 0 and st["data"]["size"] > 0
    assert st["levels_run"][:2] == ["L0-basic", "L1-priors"] and st["gradleak_version"]
    assert f"Model: mlp ({st['model_class']}), {st['parameters']:,} parameters" in md
    assert verdict["plain"].startswith("In ") and "runs at L0-basic" in verdict["plain"]
    assert f"In plain words: {verdict['plain']}" in md
    # The malicious reference stands on its own line, never beside the verdict.
    assert "\n\nMalicious reference (level 5" in md and "Malicious" not in md.splitlines()[2]
    best = levels[0]["best"]  # the update-free baselines stand beside the evidence
    assert set(best["baselines"]) == {"flat", "data_mean", "nearest_other"}
    assert best["psnr"] > max(b["psnr"] for b in best["baselines"].values())
    assert "Without the update (LPIPS / PSNR): " in md and "flat mean colour" in md
    # Resumed: nothing is redone, the verdict is the same.
    capsys.readouterr()
    assert main(["audit", "--out", str(out), "--budget", "quick", "--quiet", *LEAKY]) == 0
    assert "0 ran" in capsys.readouterr().out
    assert json.loads((out / "verdict.json").read_text())["levels"] == verdict["levels"]


@pytest.mark.parametrize("args, fragment", [
    (["--budget", "huge", "data.resolution=16"], "bad value 'huge' for --budget"),
    (["--max-accuracy-drop", "-1", "data.resolution=16"], "--max-accuracy-drop"),
    (["--seeds", "0", "data.resolution=16"], "--seeds"),
    (["--plan", "x.yaml", "--budget", "quick"], "cannot go with --plan"),
    (["--plan", "x.yaml", "--config", "c.yaml"], "cannot go with --plan"),
    (["attack.bogus=1"], "attack.bogus"),
])
def test_bad_input_is_one_line_before_any_run(tmp_path, capsys, args, fragment):
    out = tmp_path / "out"
    assert main(["audit", "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1
    assert not (out / "results.sqlite").exists()
