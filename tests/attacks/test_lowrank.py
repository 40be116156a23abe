"""Factored linear-layer gradients (attacks/lowrank.py) give the dense cosine distance and image
gradient to float tolerance, and are used only where they apply."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gradleak.attacks import build_attack, lowrank, observe
from gradleak.attacks.losses import cosine_distance
from gradleak.attacks.restart import Restart
from gradleak.config import AttackConfig, ClientConfig, ModelConfig, ThreatConfig
from gradleak.fl.client import ClientSetup, client_update
from gradleak.models import build_model
from gradleak.threat import ThreatModel
from tests.conftest import photo


def _observation(batch: int = 2, hidden: int = 512):
    images = torch.cat([photo(n, 16) for n in ("astronaut", "coffee")][:batch])
    labels = torch.arange(batch)
    torch.manual_seed(0)
    net = build_model(ModelConfig(name="mlp", hidden=[hidden, 32]), num_classes=10, channels=3,
                      resolution=16, mean=(0.5,) * 3, std=(0.25,) * 3).eval()
    setup = ClientSetup.from_config(ClientConfig(), batch)
    update = client_update(net, images, labels, setup, seed=0)
    return observe(model=net, update=update, threat=ThreatModel.from_config(ThreatConfig()),
                   setup=setup, labels=labels, input_shape=(3, 16, 16), num_classes=10)


def _objective_and_gradient(attack, obs):
    setup = attack.matching_setup(obs)
    ctx = attack.context(setup, obs, obs.labels, None)
    restart = Restart(ctx, torch.Generator().manual_seed(0))
    total, match = restart.objective()
    (grad,) = torch.autograd.grad(total, restart.free)
    return setup, match.detach(), grad


def test_factored_first_layer_matches_the_dense_gradient():
    obs = _observation()
    attack = build_attack(AttackConfig(name="ig"))
    setup, match, grad = _objective_and_gradient(attack, obs)
    assert list(setup.lowrank) == [0]  # the 768 x 512 first layer only
    saved, lowrank.MIN_WEIGHTS = lowrank.MIN_WEIGHTS, float("inf")
    try:
        dense_setup, dense_match, dense_grad = _objective_and_gradient(attack, obs)
    finally:
        lowrank.MIN_WEIGHTS = saved
    assert dense_setup.lowrank == {}
    torch.testing.assert_close(match, dense_match, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, dense_grad, rtol=1e-3, atol=1e-6)


def test_factored_gradient_algebra_against_dense():
    torch.manual_seed(1)
    g, x, o = torch.randn(3, 40), torch.randn(3, 70), torch.randn(40, 70)
    f = lowrank.LowRankGradient(g, x)
    torch.testing.assert_close(f.dot(o), (g.T @ x * o).sum())
    torch.testing.assert_close(f.squared_norm(), (g.T @ x).pow(2).sum())
    torch.testing.assert_close(cosine_distance([f, g[0]], [o, torch.ones(70)[:40]]),
                               cosine_distance([f.dense(), g[0]], [o, torch.ones(70)[:40]]))


def test_not_factored_for_l2_small_layers_large_batches_or_3d_inputs():
    obs = _observation()
    assert build_attack(AttackConfig(name="ig", distance="l2")).matching_setup(obs).lowrank == {}
    assert build_attack(AttackConfig(name="ig")).matching_setup(_observation(hidden=64)).lowrank == {}
    big = nn.Linear(768, 512)
    names = ["weight", "bias"]
    assert lowrank.factorable(big, names, [0, 1], 200, (768,)) == {}  # rank 200 is not low

    class Tokens(nn.Module):  # a linear layer on [B, T, D]: its gradient is not rank B
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(768, 512)

        def forward(self, x):
            return self.proj(x.view(x.shape[0], 4, 768)).sum(1)

    assert lowrank.factorable(Tokens(), ["proj.weight", "proj.bias"], [0, 1], 2, (4 * 768,)) == {}
    assert list(lowrank.factorable(big, names, [0, 1], 2, (768,))) == [0]


def test_the_probe_leaves_train_mode_bn_statistics_alone():
    model = nn.Sequential(nn.Linear(768, 512), nn.BatchNorm1d(512), nn.Linear(512, 10)).train()
    before = model[1].running_mean.clone()
    assert list(lowrank.factorable(model, [n for n, _ in model.named_parameters()], [0], 2, (768,))) == [0]
    assert torch.equal(model[1].running_mean, before)
    x = torch.randn(2, 768)
    grads = lowrank.factored_gradients(model, list(model.parameters()), {0: model[0]},
                                       lambda: F.cross_entropy(model(x), torch.tensor([1, 2])))
    assert isinstance(grads[0], lowrank.LowRankGradient) and grads[0].dense().shape == (512, 768)
