"""``gradleak audit --update``: a client update saved from a Flower app, audited on the global
model, scores like the simulated run of the same client; bad files are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("safetensors")

import torch  # noqa: E402
from flwr.app import ArrayRecord  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from gradleak.audit.ladder import level_config, load_ladder, read_setup  # noqa: E402
from gradleak.cli import main  # noqa: E402
from gradleak.scenario import Scenario  # noqa: E402
from tests.flower import apps  # noqa: E402

ITER = ["attack.iterations=150"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """What a Flower client sent in round 1 (its reply minus the global arrays), the global
    model's weights and the client's samples, as a user would save them."""
    root = tmp_path_factory.mktemp("captured")
    global_ = apps.make_model().state_dict()
    reply = apps.train(apps.train_message(ArrayRecord(global_), node_id=7), apps.context(7, 0))
    new = reply.content["arrays"].to_torch_state_dict()
    save_file({k: (new[k] - global_[k]).contiguous() for k in global_}, str(root / "delta.safetensors"))
    torch.save(new, root / "weights.pt")
    torch.save(global_, root / "global.pt")
    images, labels = apps.client_data(0)
    np.savez(root / "truth.npz", x=images.numpy(), y=labels.numpy())
    return root


def audit(root, *extra):
    return main(["audit", "--out", str(root / "out"), "--budget", "quick", "--quiet",
                 *apps.OVERRIDES, *ITER, f"model.checkpoint={root / 'global.pt'}", *extra])


def test_a_saved_flower_update_scores_like_the_simulated_client(saved):
    code = audit(saved, "--update", str(saved / "delta.safetensors"), "--truth",
                 str(saved / "truth.npz"), "--fail-on-leak")
    result = json.loads((saved / "out" / "captured.json").read_text())
    levels = {lv["name"]: lv for lv in result["levels"]}
    # The simulated run of the same client (seed 0 picks the same victim), at level 0.
    setup = read_setup(None, [*apps.OVERRIDES, *ITER])
    ladder = load_ladder().for_setup(setup)
    l0 = next(lv for lv in ladder.levels if lv.level == 0)
    cfg = level_config(ladder, l0, setup, ladder.budget("quick"), seed=0,
                       extra={"threat.knows_labels": False, "attack.labels": "idlg"})
    sim = Scenario.from_config(cfg).run().result["metrics"]
    print(f"captured {levels['L0-basic']['psnr']:.2f} dB, simulated {sim['psnr']:.2f} dB")
    assert abs(levels["L0-basic"]["psnr"] - sim["psnr"]) < 1.0
    assert levels["L0-basic"]["verdict"] == "leaks" and result["verdict"] == "leaks"
    assert code == 1  # --fail-on-leak
    assert levels["L4-bn"]["verdict"] == "not run" and "BN batch" in levels["L4-bn"]["reason"]
    assert (saved / "out" / levels["L0-basic"]["image"]).is_file()
    assert "one captured update is one trial" in (saved / "out" / "report.md").read_text().lower()
    (saved / "out" / "report.md").unlink()
    assert main(["report", str(saved / "out")]) == 0  # the captured audit's report again
    assert (saved / "out" / "report.md").read_text().startswith("# gradleak audit of a captured")


def test_new_weights_without_a_truth_show_the_attacks_own_evidence(saved, tmp_path):
    out = tmp_path / "w"
    code = main(["audit", "--out", str(out), "--budget", "quick", "--quiet", *apps.OVERRIDES,
                 *ITER, f"model.checkpoint={saved / 'global.pt'}", "--update",
                 str(saved / "weights.pt"), "--update-is", "weights"])
    result = json.loads((out / "captured.json").read_text())
    l0 = result["levels"][0]
    assert code == 0 and result["verdict"] == "not scored" and "psnr" not in l0
    assert l0["attack_loss"] is not None and l0["labels_inferred"] == apps.client_data(0)[1].tolist()
    assert "no similarity score can be computed" in result["claim"]


@pytest.mark.parametrize("extra, message", [
    (["--update", "missing.pt"], "--update 'missing.pt' does not exist"),
    (["--truth", "x.npz"], "--truth goes with --update FILE"),
    (["--update", "{root}/global.pt", "--seeds", "3"], "--seeds does not apply to --update"),
    (["--update", "{root}/truth.npz"], "is not a torch weights file"),
    (["--update", "{root}/global.pt", "--update-is", "weights"], "is all zeros"),
])
def test_bad_captured_inputs_are_one_line(saved, capsys, extra, message):
    extra = [e.format(root=saved) for e in extra]
    assert audit(saved, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
