"""WST replay: the attacker's differentiable simulation of the client's local training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from gradleak.attacks.simulate import batch_order, simulated_delta
from gradleak.config import ClientConfig, ModelConfig
from gradleak.errors import GradleakError
from gradleak.fl.client import (
    ClientSetup,
    client_batch_order,
    client_generators,
    client_update,
    set_bn_mode,
)
from gradleak.models import build_model


def _model(norm="none"):
    torch.manual_seed(0)
    # No conv bias before train-mode BN: its true gradient is exactly 0, and Adam would turn the
    # float noise there into steps of +-lr that no replay can reproduce (nor needs to).
    return build_model(ModelConfig(name="convnet", width=4, norm=norm, bias=norm == "none"),
                       num_classes=4,
                       channels=3, resolution=8, mean=(0.5,) * 3, std=(0.25,) * 3)


def _data(n=4):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3, 0, 1][:n])


def _replay(model, x, y, setup, order):
    attacker = copy.deepcopy(model)
    set_bn_mode(attacker, setup.bn_mode, dropout=False)
    names = [n for n, _ in attacker.named_parameters()]
    return names, simulated_delta(attacker, names, x, y, setup, order)


CASES = {
    "sgd": {},
    "momentum-wd": {"momentum": 0.9, "weight_decay": 5e-4},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "adam": {"optimizer": "adam", "lr": 0.01},
    "adamw-smooth": {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.05,
                     "label_smoothing": 0.1},
}


@pytest.mark.parametrize("norm", ["none", "batch"])
@pytest.mark.parametrize("case", list(CASES))
def test_replay_with_true_data_and_order_reproduces_the_client(case, norm):
    model, (x, y) = _model(norm), _data()
    setup = ClientSetup.from_config(ClientConfig(protocol="fedavg", local_epochs=3, batch_size=2,
                                                 **CASES[case]), 4)
    assert setup.bn_mode == "train"  # FedAvg's default: what model.train() does
    update = client_update(model, x, y, setup, seed=7)
    order = client_batch_order(setup, client_generators(7)[0])
    names, delta = _replay(model, x, y, setup, order)
    for n, d in zip(names, delta, strict=True):
        torch.testing.assert_close(d.detach(), update.tensors[n], rtol=1e-4, atol=1e-6)


def test_replay_is_differentiable_and_matches_where_bst_does_not():
    """With Adam the delta is far from a scaled gradient: WST's replay of the true images
    matches it (cosine distance ~0) while BST's one-gradient model does not."""
    model, (x, y) = _model(), _data(2)
    setup = ClientSetup.from_config(ClientConfig(protocol="fedavg", local_epochs=2, batch_size=1,
                                                 optimizer="adam", lr=0.001, bn_mode="eval"), 2)
    update = client_update(model, x, y, setup, seed=0)
    target = torch.cat([v.flatten() for v in update.tensors.values()])
    xs = x.clone().requires_grad_(True)
    names, delta = _replay(model, xs, y, setup, client_batch_order(setup, client_generators(0)[0]))
    wst = torch.cat([d.flatten() for d in delta])
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    bst = -torch.cat([g.flatten() for g in grads])
    assert 1 - F.cosine_similarity(wst, target, dim=0) < 1e-5
    assert 1 - F.cosine_similarity(bst, target, dim=0) > 0.1
    (gx,) = torch.autograd.grad(wst.square().sum(), xs)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0


def _functional_two_steps(net, params, buffers, images, labels, generator):
    for _ in range(2):
        i = torch.randperm(len(labels), generator=generator)[:2]
        logits = torch.func.functional_call(net, (params, buffers), (images[i],))
        grads = torch.autograd.grad(F.cross_entropy(logits, labels[i]), list(params.values()),
                                    create_graph=True)
        params = {n: p - 0.1 * g for (n, p), g in zip(params.items(), grads, strict=True)}
    return params


def _optim_steps(net, params, buffers, images, labels, generator):
    local = copy.deepcopy(net)
    opt = torch.optim.SGD(local.parameters(), lr=0.1)
    opt.zero_grad()
    F.cross_entropy(local(images), labels).backward()
    opt.step()
    return dict(local.named_parameters())


def test_user_local_train_is_replayed_or_refused():
    model, (x, y) = _model(), _data()
    setup = ClientSetup.from_config(ClientConfig(protocol="fedavg", bn_mode="eval"), 4,
                                    local_train=_functional_two_steps)
    update = client_update(model, x, y, setup, seed=3)
    order = batch_order(setup, torch.Generator().manual_seed(0))
    order.seed = 3  # the client's own generator seed: then the replay is exact
    xs = x.clone().requires_grad_(True)
    names, delta = _replay(model, xs, y, setup, order)
    for n, d in zip(names, delta, strict=True):
        torch.testing.assert_close(d.detach(), update.tensors[n], rtol=1e-4, atol=1e-6)
    # The attacker draws its own seed for the user's randomness.
    assert batch_order(setup, torch.Generator().manual_seed(0)).seed != 0
    bad = ClientSetup.from_config(ClientConfig(protocol="fedavg", bn_mode="eval"), 4,
                                  local_train=_optim_steps)
    client_update(model, x, y, bad, seed=0)  # the client itself can run it
    with pytest.raises(GradleakError, match="not differentiable in the client's images") as info:
        _replay(model, xs, y, bad, batch_order(bad, torch.Generator()))
    assert "\n" not in str(info.value)
