"""DLG, iDLG and GradInversion through the shared GIA-O engine, and the engine's composable terms."""

import json

import pytest
import torch

from gradleak.attacks import ATTACKS, build_attack
from gradleak.attacks.losses import cosine_distance, l2_distance
from gradleak.attacks.optimization import select_layers
from gradleak.attacks.priors import BatchNormStatistics, total_variation
from gradleak.cli import main
from gradleak.config import load_config
from gradleak.errors import GradleakError
from gradleak.runner import run_scenario


def test_every_paper_gia_o_attack_is_registered():
    assert {"dlg", "idlg", "ig", "gradinversion"} <= set(ATTACKS.names())


def test_presets_set_attack_defaults_and_user_overrides_win():
    dlg = load_config(None, ["attack.name=dlg"])
    assert (dlg.attack.distance, dlg.attack.optimizer, dlg.attack.learn_labels) == ("l2", "lbfgs", True)
    assert load_config(None, ["attack.name=dlg", "attack.iterations=7"]).attack.iterations == 7
    assert load_config(None, ["attack.name=ig"]).attack.distance == "cosine"


def test_dlg_recovers_an_image_on_the_sigmoid_lenet():
    """DLG's own demo setting (sigmoid LeNet, U(-0.5, 0.5) init, raw pixels), where L-BFGS converges."""
    cfg = load_config(None, ["attack.name=dlg", "model.name=lenet", "model.init=uniform",
                             "model.normalize=false", "data.resolution=16", "attack.iterations=15"])
    result = run_scenario(cfg).result
    assert result["metrics"]["psnr"] >= 30
    assert result["labels"]["source"] == "optimised"
    assert result["metrics"]["label_accuracy"] == 1.0


def test_idlg_infers_the_label_first():
    cfg = load_config(None, ["attack.name=idlg", "model.name=lenet", "model.init=uniform",
                             "model.normalize=false", "data.resolution=16", "attack.iterations=1",
                             "threat.knows_labels=false"])
    result = run_scenario(cfg).result
    assert result["labels"]["source"] == "idlg"
    assert result["metrics"]["label_accuracy"] == 1.0


def test_gradinversion_needs_bn_statistics_and_runs_with_them(tmp_path, capsys):
    base = ["attack.name=gradinversion", "model.width=4", "model.norm=batch", "data.resolution=16",
            "data.num_samples=2", "attack.iterations=5", "--quiet"]
    assert main(["attack", "--out", str(tmp_path / "a"), *base]) == 2
    assert "threat.knows_bn_statistics=true" in capsys.readouterr().err
    assert main(["attack", "--out", str(tmp_path / "b"), *base,
                 "threat.knows_bn_statistics=true"]) == 0
    assert main(["attack", "--out", str(tmp_path / "c"), *base, "attack.bn_source=running"]) == 0
    result = json.loads((tmp_path / "b" / "result.json").read_text())
    assert result["config"]["attack"]["bn"] == 0.1


def test_bn_prior_is_zero_at_the_target_statistics():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    x = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        h = net[0](x)
    target = [(h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False))]
    prior = BatchNormStatistics(net, target)
    prior.start()
    net(x)
    assert float(prior.loss()) == pytest.approx(0.0, abs=1e-5)
    prior.start()
    net(torch.rand(5, 3, 8, 8) * 3)
    assert float(prior.loss()) > 0.1
    prior.remove()


def test_distances_and_priors():
    a = [torch.tensor([1.0, 0.0]), torch.tensor([2.0])]
    assert float(cosine_distance(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(cosine_distance(a, [-t for t in a])) == pytest.approx(2.0)
    assert float(cosine_distance(a, [3 * t for t in a])) == pytest.approx(0.0, abs=1e-6)
    assert float(l2_distance(a, [torch.zeros(2), torch.zeros(1)])) == pytest.approx(5.0)
    # A per-layer weight of zero removes that layer from the distance.
    assert float(l2_distance(a, [torch.zeros(2), torch.zeros(1)], [1.0, 0.0])) == pytest.approx(1.0)
    flat = torch.full((1, 3, 4, 4), 0.3)
    assert float(total_variation(flat)) == 0.0
    assert float(total_variation(torch.rand(1, 3, 4, 4))) > 0


def test_layer_subsets():
    names = ["net.0.weight", "net.0.bias", "net.10.weight", "net.3.weight"]
    assert select_layers(names, None) == [0, 1, 2, 3]
    assert select_layers(names, ["net.0"]) == [0, 1]
    assert select_layers(names, ["net.3.weight"]) == [3]
    with pytest.raises(GradleakError, match="matches no parameter"):
        select_layers(names, ["head"])


def test_attack_reading_only_a_layer_subset_runs():
    cfg = load_config(None, ["model.name=mlp", "model.hidden=[32]", "data.resolution=16",
                             "attack.iterations=20", "attack.layers=[net.1]"])
    attack = build_attack(cfg.attack)
    assert attack.layers == ["net.1"]
    assert run_scenario(cfg).result["metrics"]["psnr"] > 5
