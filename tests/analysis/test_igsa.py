"""IGSA (paper Sec. 5.1) on known cases, determinism, fresh vs trained; the Sec. 4 theory checks."""

from __future__ import annotations

import copy
import csv
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradleak.analysis.igsa import (
    default_radius,
    igsa,
    normalise_stages,
    parameter_layers,
    sample_l2_ball,
    shallow_weights,
)
from gradleak.analysis.theory import dimension_check, lemma41_check
from gradleak.cli import main
from gradleak.config import DataConfig, ModelConfig
from gradleak.data import build_dataset
from gradleak.errors import GradleakError
from gradleak.experiments.local_updates import local_updates_plan
from gradleak.models import build_model


def _quadratic(out: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
    """L = 1/2 ||W x||^2: its weight gradient W x x^T is exactly linear in W."""
    return 0.5 * out.square().sum()


def _linear(d: int = 12, k: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, k, bias=False))


def _convnet(res: int = 16, width: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(name="convnet", width=width), num_classes=10, channels=3,
                       resolution=res, mean=(0.5,) * 3, std=(0.25,) * 3)


def test_shallow_weights_and_layers():
    assert shallow_weights(3).tolist() == pytest.approx([6 / 11, 3 / 11, 2 / 11])
    names = [n for n, _ in parameter_layers(_convnet())]
    assert names[:2] == ["net.0.0", "net.0.1"] and names[-1] == "net.3"  # conv, its BN, ..., head


def test_ball_samples_are_uniform_l2_and_seeded():
    x = torch.rand(3, 4, 4)
    pts = sample_l2_ball(x, 0.5, 64, torch.Generator().manual_seed(1))
    again = sample_l2_ball(x, 0.5, 64, torch.Generator().manual_seed(1))
    assert pts.shape == (64, 3, 4, 4) and torch.equal(pts, again)
    dist = (pts - x).flatten(1).norm(dim=1)
    assert (dist <= 0.5 + 1e-6).all() and dist.min() > 0.3  # d = 48: mass sits near the sphere
    assert default_radius((3, 32, 32)) == pytest.approx(0.25 * 3072 ** 0.5)


def test_linear_quadratic_known_case():
    """G(x) = W x x^T: IGSA(c W) = IGSA(W) / c exactly; the direction (relative) is unchanged,
    and the value matches the closed form with the same draws."""
    x = torch.rand(2, 12)
    model = _linear()
    raw = igsa(model, x, [0, 0], radius=0.7, num_points=5, seed=3, loss_fn=_quadratic, relative=False)
    rel = igsa(model, x, [0, 0], radius=0.7, num_points=5, seed=3, loss_fn=_quadratic)
    with torch.no_grad():
        model[1].weight.mul_(4.0)
    raw4 = igsa(model, x, [0, 0], radius=0.7, num_points=5, seed=3, loss_fn=_quadratic, relative=False)
    rel4 = igsa(model, x, [0, 0], radius=0.7, num_points=5, seed=3, loss_fn=_quadratic)
    assert raw4.value == pytest.approx(raw.value / 4, rel=1e-5)
    assert rel4.value == pytest.approx(rel.value, rel=1e-5)

    w = model[1].weight.detach().double()
    gen = torch.Generator().manual_seed(3)
    s = []
    for xi in x:
        pts = sample_l2_ball(xi, 0.7, 5, gen)
        g0 = w @ xi.double()[:, None] @ xi.double()[None]
        s.append(sum(float((w @ p.double()[:, None] @ p.double()[None] - g0).norm()
                           / (p - xi).double().norm()) for p in pts) / 5)
    assert raw4.per_sample == pytest.approx([1 / v for v in s], rel=1e-4)
    assert raw4.value == pytest.approx(1 / (sum(s) / 2), rel=1e-4)


def test_relative_ignores_loss_scale_absolute_does_not():
    model, x = _convnet(), torch.rand(1, 3, 16, 16)
    kw = dict(radius=2.0, num_points=2, seed=0)
    base_raw = igsa(model, x, [3], relative=False, **kw)
    base_rel = igsa(model, x, [3], **kw)
    scaled = lambda out, y: 3.0 * F.cross_entropy(out, y)  # noqa: E731
    assert igsa(model, x, [3], loss_fn=scaled, relative=False, **kw).value == pytest.approx(
        base_raw.value / 3, rel=1e-4)
    assert igsa(model, x, [3], loss_fn=scaled, **kw).value == pytest.approx(base_rel.value, rel=1e-4)


def test_deterministic_restores_modes_and_validates():
    model, x = _convnet(), torch.rand(2, 3, 16, 16)
    model.train()
    bn = model.net[0][1]
    stats = bn.running_mean.clone()
    a = igsa(model, x, [1, 2], num_points=2, seed=7)
    b = igsa(model, x, [1, 2], num_points=2, seed=7)
    c = igsa(model, x, [1, 2], num_points=2, seed=8)
    assert a.to_dict() == b.to_dict()
    assert a.value != c.value
    assert model.training and bn.training and torch.equal(bn.running_mean, stats)
    assert a.radius == pytest.approx(default_radius((3, 16, 16))) and a.relative
    assert len(a.per_sample) == 2 and len(a.sensitivity) == len(a.layers) == len(a.weights)
    pred = igsa(model, x, None, num_points=1, seed=7)
    assert pred.label_source == "predicted" and len(pred.labels) == 2
    with pytest.raises(GradleakError, match="radius"):
        igsa(model, x, [1, 2], radius=0.0)
    with pytest.raises(GradleakError, match="number of points"):
        igsa(model, x, [1, 2], num_points=0)
    with pytest.raises(GradleakError, match="2 images but 1 labels"):
        igsa(model, x, [1])


def test_normalise_stages():
    assert normalise_stages([2.0, 4.0, 3.0]) == [0.0, 1.0, 0.5]
    assert normalise_stages([5.0, 5.0]) == [0.0, 0.0]
    assert normalise_stages([]) == []
    with pytest.raises(GradleakError, match="finite"):
        normalise_stages([1.0, float("inf")])


def test_fresh_convnet_smoother_than_trained():
    """Paper Fig. 7 / Insight 5.1: IGSA drops as the model fits the data (200 SGD steps, 16 px)."""
    data = build_dataset(DataConfig(dataset="skimage", resolution=16))
    images, labels = data.images, data.labels
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="convnet", width=8), num_classes=10, channels=3,
                        resolution=16, mean=data.mean, std=data.std)
    fresh = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(200):
        batch = torch.randint(0, len(images), (16,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(images[batch]), labels[batch]).backward()
        opt.step()
    victims = torch.tensor([data.classes.index(n) for n in ("chelsea", "coffee", "astronaut",
                                                            "motorcycle")]) * data.per_class
    before = igsa(fresh, images[victims], labels[victims], num_points=4, seed=0)
    after = igsa(model, images[victims], labels[victims], num_points=4, seed=0)
    raw_before = igsa(fresh, images[victims], labels[victims], num_points=4, seed=0, relative=False)
    raw_after = igsa(model, images[victims], labels[victims], num_points=4, seed=0, relative=False)
    print(f"IGSA fresh {before.value:.4g} trained {after.value:.4g}; "
          f"absolute: fresh {raw_before.value:.4g} trained {raw_after.value:.4g}")
    assert before.value > 1.2 * after.value


def test_igsa_command_writes_json(tmp_path):
    code = main(["igsa", "--out", str(tmp_path), "--points", "2", "model.width=4",
                 "data.resolution=16", "data.num_samples=2"])
    assert code == 0
    result = json.loads((tmp_path / "igsa.json").read_text())
    assert result["igsa"] > 0 and len(result["result"]["per_sample"]) == 2
    assert result["result"]["num_points"] == 2 and result["model"] == "convnet"
    assert result["dimension"]["data_dimension"] == 2 * 3 * 16 * 16
    assert main(["igsa", "--out", str(tmp_path), "--radius", "-1", "model.width=4",
                 "data.resolution=16"]) == 2


# -- Sec. 4 theory -------------------------------------------------------------------------------


def test_dimension_check_thm_4_3():
    mlp = build_model(ModelConfig(name="mlp", hidden=[4]), num_classes=2, channels=3, resolution=8,
                      mean=(0.5,) * 3, std=(0.25,) * 3)
    params = 192 * 4 + 4 + 4 * 2 + 2
    small = dimension_check(mlp, 1, (3, 8, 8))
    assert small == {"data_dimension": 192, "parameters": params, "ratio": 192 / params,
                     "warning": False, "message": small["message"]}
    big = dimension_check(mlp, 5, (3, 8, 8))
    assert big["warning"] and "exceeds" in big["message"]


def test_lemma_4_1_exact_from_one_gradient():
    out = lemma41_check()
    assert out["exact"] and out["max_abs_error"] < 1e-4


def test_theory_command_analytic(tmp_path):
    assert main(["theory", "--out", str(tmp_path), "--max-updates", "2", "--attacks", "analytic"]) == 0
    rows = list(csv.DictReader((tmp_path / "theory.csv").open()))
    assert [(r["attack"], r["U"]) for r in rows] == [("analytic", "1"), ("analytic", "2")]
    assert (tmp_path / "theory.png").stat().st_size > 0
    result = json.loads((tmp_path / "theory.json").read_text())
    assert result["lemma_4_1"]["exact"] and not result["theorem_4_3"]["warning"]
    with pytest.raises(GradleakError, match="unknown theory attack"):
        local_updates_plan([1], attacks=["nope"])
