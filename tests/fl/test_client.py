import math

import torch
import torch.nn.functional as F

from gradleak.attacks.simulate import simulated_delta
from gradleak.config import ClientConfig, ModelConfig
from gradleak.fl.client import ClientSetup, client_round, client_update, set_bn_mode
from gradleak.models import build_model


def _model(name="convnet", **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, width=4, **kw)
    return build_model(cfg, num_classes=4, channels=3, resolution=16, mean=(0.5,) * 3,
                       std=(0.25,) * 3)


def _data(n=4):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 3, 0, 1][:n])


def test_fedsgd_shares_the_mean_loss_gradient():
    model, (x, y) = _model(norm="none"), _data()
    setup = ClientSetup.from_config(ClientConfig(protocol="fedsgd"), 4)
    update = client_update(model, x, y, setup, seed=0)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    assert update.kind == "gradient"
    for (name, _), g in zip(model.named_parameters(), grads, strict=True):
        torch.testing.assert_close(update.tensors[name], g)


def test_fedavg_counts_updates_and_one_step_is_minus_lr_grad():
    setup = ClientSetup.from_config(ClientConfig(protocol="fedavg", local_epochs=3,
                                                 batch_size=3), 7)
    assert setup.local_updates == 3 * math.ceil(7 / 3)
    model, (x, y) = _model(norm="none"), _data()
    one = ClientSetup.from_config(ClientConfig(protocol="fedavg", lr=0.05), 4)
    update = client_update(model, x, y, one, seed=0)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    assert update.kind == "model_delta"
    for (name, _), g in zip(model.named_parameters(), grads, strict=True):
        torch.testing.assert_close(update.tensors[name], -0.05 * g, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(update.gradient_direction()[name], 0.05 * g, rtol=1e-4,
                                   atol=1e-6)


def test_client_does_not_touch_the_global_model():
    model, (x, y) = _model(norm="batch"), _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    setup = ClientSetup.from_config(ClientConfig(protocol="fedavg", local_epochs=2,
                                                 batch_size=2, bn_mode="train"), 4)
    client_update(model, x, y, setup, seed=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_fedavg_is_seeded():
    model, (x, y) = _model(norm="none"), _data()
    setup = ClientSetup.from_config(ClientConfig(protocol="fedavg", local_epochs=2,
                                                 batch_size=1), 4)
    a = client_update(model, x, y, setup, seed=5)
    b = client_update(model, x, y, setup, seed=5)
    c = client_update(model, x, y, setup, seed=6)
    name = next(iter(a.tensors))
    assert torch.equal(a.tensors[name], b.tensors[name])
    assert not torch.equal(a.tensors[name], c.tensors[name])


def test_simulation_with_true_data_and_order_reproduces_the_client():
    """The WST attacker's differentiable replay is exact when given the true data and order."""
    model, (x, y) = _model(norm="none"), _data()
    setup = ClientSetup.from_config(ClientConfig(protocol="fedavg", local_epochs=2,
                                                 batch_size=2, lr=0.1), 4)
    update = client_update(model, x, y, setup, seed=3)
    g = torch.Generator().manual_seed(3)
    order = []
    for _ in range(setup.local_epochs):
        order += list(torch.randperm(4, generator=g).split(2))
    set_bn_mode(model, "eval", dropout=False)
    names = [n for n, _ in model.named_parameters()]
    delta = simulated_delta(model, names, x, y, setup, order)
    for n, d in zip(names, delta, strict=True):
        torch.testing.assert_close(d.detach(), update.tensors[n], rtol=1e-4, atol=1e-6)


def test_batch_is_capped_at_the_clients_own_samples():
    # One rule for every client (FL clients and the victim): B above N trains on one batch of N.
    setup = ClientSetup.from_config(ClientConfig(protocol="fedavg", batch_size=8), 4)
    assert setup.batch_size == 4 and setup.local_updates == 1
    assert ClientSetup.from_config(ClientConfig(protocol="fedavg", batch_size=3), 4).batch_size == 3


def test_bn_statistics_are_recorded():
    model, (x, y) = _model(norm="batch"), _data()
    setup = ClientSetup.from_config(ClientConfig(), 4)
    rnd = client_round(model, x, y, setup, seed=0)
    assert not hasattr(rnd.update, "bn_statistics"), "the uploaded update must not carry them"
    assert len(rnd.bn_statistics) == 3
    mean, var = rnd.bn_statistics[0]
    assert mean.shape == var.shape == (4,)
