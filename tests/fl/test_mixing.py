"""MixUp / InstaHide client training (gradleak.fl.mixing, GradAttack's defaults)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gradleak.attacks import observe
from gradleak.config import ClientConfig, ModelConfig, ThreatConfig
from gradleak.errors import GradleakError
from gradleak.fl.client import ClientSetup, client_round, client_update
from gradleak.fl.dp import DPSettings, dp_client_update
from gradleak.fl.mixing import check_mixing, draw_plan, encode, encoding_range, soft_labels
from gradleak.models import build_model
from gradleak.threat import ThreatModel


def _model():
    torch.manual_seed(0)
    return build_model(ModelConfig(name="mlp", hidden=[16]), num_classes=4, channels=3,
                       resolution=8, mean=(0.4, 0.5, 0.6), std=(0.25,) * 3)


def _data(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3, 0, 1][:n])


def _setup(n=6, **kw):
    return ClientSetup.from_config(ClientConfig(**kw), n)


@pytest.mark.parametrize("kind", ["mixup", "instahide"])
def test_a_plan_mixes_k_distinct_samples_itself_first_within_the_bounds(kind):
    plan = draw_plan(kind, 7, 4, 0.05, 0.65, (3, 2, 2), torch.Generator().manual_seed(0))
    assert plan.partners.shape == plan.coefficients.shape == (7, 4)
    assert torch.equal(plan.partners[:, 0], torch.arange(7))
    assert all(len(set(row.tolist())) == 4 for row in plan.partners)
    torch.testing.assert_close(plan.coefficients.sum(1), torch.ones(7))
    assert plan.coefficients.min() >= 0.05 and plan.coefficients.max() <= 0.65
    if kind == "instahide":
        assert plan.signs.shape == (7, 3, 2, 2) and set(plan.signs.unique().tolist()) == {-1.0, 1.0}
    else:
        assert plan.signs is None
    again = draw_plan(kind, 7, 4, 0.05, 0.65, (3, 2, 2), torch.Generator().manual_seed(0))
    assert torch.equal(plan.partners, again.partners)


def test_the_first_coefficient_is_the_largest_on_average():
    # Dirichlet(3, 1, 1, 1): E[lambda_0] = 3/6 = 0.5, E[lambda_j] = 1/6
    plan = draw_plan("mixup", 400, 4, 0.0, 1.0, (1, 1, 1), torch.Generator().manual_seed(0))
    mean = plan.coefficients.mean(0)
    assert abs(mean[0].item() - 0.5) < 0.03 and (mean[1:] - 1 / 6).abs().max() < 0.03


def test_encodings_and_soft_labels_are_the_coefficient_weighted_mixes():
    x, y = _data()
    plan = draw_plan("instahide", 6, 3, 0.0, 0.65, (3, 8, 8), torch.Generator().manual_seed(2))
    mean = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    mixed = sum(plan.coefficients[:, j, None, None, None] * x[plan.partners[:, j]] for j in range(3))
    encoded = encode(x, plan, mean)
    torch.testing.assert_close(encoded, mean + plan.signs * (mixed - mean))
    torch.testing.assert_close((encoded - mean).abs(), (mixed - mean).abs())
    low, high = encoding_range(mean)
    assert bool((encoded >= low - 1e-6).all() and (encoded <= high + 1e-6).all())
    soft = soft_labels(y, plan, 4)
    torch.testing.assert_close(soft.sum(1), torch.ones(6))
    assert soft[0, y[0]] >= plan.coefficients[0, 0] - 1e-6


@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
def test_mixing_one_sample_is_plain_training(protocol):
    model, (x, y) = _model(), _data()
    plain = client_update(model, x, y, _setup(protocol=protocol, batch_size=3), seed=0)
    one = client_update(model, x, y, _setup(protocol=protocol, batch_size=3, mix="mixup", mix_k=1,
                                            mix_upper=1.0), seed=0)
    for name, tensor in plain.tensors.items():
        torch.testing.assert_close(one.tensors[name], tensor)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_mixup_gradient_is_soft_label_cross_entropy_on_the_encodings(smoothing):
    model, (x, y) = _model(), _data()
    setup = _setup(mix="mixup", label_smoothing=smoothing)
    rnd = client_round(model, x, y, setup, seed=3)
    plan = rnd.mixing[0]
    loss = F.cross_entropy(model(encode(x, plan, model.input_mean)), soft_labels(y, plan, 4),
                           label_smoothing=smoothing)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    plain = client_update(model, x, y, _setup(), seed=3)
    for (name, _), g in zip(model.named_parameters(), grads, strict=True):
        torch.testing.assert_close(rnd.update.tensors[name], g)
        assert not torch.allclose(plain.tensors[name], g)


def test_fedavg_mixing_changes_the_update_and_draws_one_plan_per_epoch():
    model, (x, y) = _model(), _data()
    setup = _setup(protocol="fedavg", local_epochs=2, batch_size=3, mix="instahide")
    rnd = client_round(model, x, y, setup, seed=0)
    plain = client_update(model, x, y, _setup(protocol="fedavg", local_epochs=2, batch_size=3), seed=0)
    assert len(rnd.mixing) == 2
    assert not torch.equal(rnd.mixing[0].partners, rnd.mixing[1].partners)
    assert any(not torch.allclose(rnd.update.tensors[k], plain.tensors[k]) for k in plain.tensors)


def test_the_plan_reaches_the_server_only_when_granted_and_never_its_signs():
    model, (x, y) = _model(), _data()
    setup = _setup(mix="instahide")
    rnd = client_round(model, x, y, setup, seed=0)
    kw = dict(model=model, update=rnd.update, setup=setup, labels=y, input_shape=(3, 8, 8),
              num_classes=4, mixing=rnd.mixing)
    assert observe(threat=ThreatModel.from_config(ThreatConfig()), **kw).mixing is None
    granted = observe(threat=ThreatModel.from_config(ThreatConfig(knows_mixing=True)), **kw).mixing
    assert granted[0].signs is None and rnd.mixing[0].signs is not None
    assert torch.equal(granted[0].partners, rnd.mixing[0].partners)


@pytest.mark.parametrize("args, fragment", [
    (("blend", 4, 0.0, 0.65, 6), "client.mix; allowed: none, mixup, instahide"),
    (("mixup", 5, 0.0, 0.65, 4), "needs at least 5 samples"),
    (("mixup", 4, 0.3, 0.65, 6), "need mix_lower <= 1/4 <= mix_upper"),
    (("mixup", 4, 0.0, 0.2, 6), "need mix_lower <= 1/4 <= mix_upper"),
    (("instahide", 2, 0.7, 0.6, 6), "0 <= mix_lower <= mix_upper <= 1"),
])
def test_bad_mixing_settings_are_one_line_errors(args, fragment):
    with pytest.raises(GradleakError, match=fragment.replace("(", r"\(")):
        check_mixing(*args)


def test_mixing_is_refused_where_it_cannot_apply():
    model, (x, y) = _model(), _data()
    with pytest.raises(GradleakError, match="needs at least 4 samples"):
        _setup(n=3, mix="mixup")
    with pytest.raises(GradleakError, match="DP-SGD .* does not support client.mix=mixup"):
        dp_client_update(model, x, y, _setup(mix="mixup"), DPSettings(1.0, 1.0, 1e-5), seed=0)
