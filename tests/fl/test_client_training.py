"""The client's training loop: optimisers, augmentation, label smoothing, BN default, bad values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gradleak.config import ClientConfig, ModelConfig, load_config
from gradleak.errors import GradleakError
from gradleak.fl.client import (
    ClientSetup,
    client_batch_order,
    client_generators,
    client_update,
)
from gradleak.models import build_model, prepare_user_model


def _model(norm="none"):
    torch.manual_seed(0)
    return build_model(ModelConfig(name="convnet", width=4, norm=norm), num_classes=4,
                       channels=3, resolution=8, mean=(0.5,) * 3, std=(0.25,) * 3)


def _data(n=4):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3, 0, 1][:n])


def _setup(n=4, **kw):
    return ClientSetup.from_config(ClientConfig(**kw), n)


def test_defaults_keep_plain_sgd_and_bn_auto_resolves_per_protocol():
    assert _setup(protocol="fedavg").bn_mode == "train"
    assert _setup(protocol="fedsgd").bn_mode == "eval"
    assert _setup(protocol="fedavg", bn_mode="eval").bn_mode == "eval"
    assert ClientSetup("fedavg", 1, 2, 0.1, 2).bn_mode == "train"  # positional construction too
    plain = _setup(protocol="fedavg", local_epochs=2, batch_size=2, bn_mode="eval")
    model, (x, y) = _model(), _data()
    update = client_update(model, x, y, plain, seed=3)
    # By hand: torch.optim.SGD over the client's order.
    local = _model()
    opt = torch.optim.SGD(local.parameters(), lr=0.1)
    for batch in client_batch_order(plain, client_generators(3)[0]):
        opt.zero_grad()
        F.cross_entropy(local(x[batch]), y[batch]).backward()
        opt.step()
    for (n, p), p0 in zip(local.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(update.tensors[n], p.detach() - p0, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kw", [{"optimizer": "adam", "lr": 0.01},
                                {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.1},
                                {"optimizer": "sgd", "momentum": 0.9, "nesterov": True}])
def test_optimizers_are_torch_optim(kw):
    setup = _setup(protocol="fedavg", local_epochs=2, batch_size=2, bn_mode="eval", **kw)
    model, (x, y) = _model(), _data()
    update = client_update(model, x, y, setup, seed=0)
    local = _model()
    name = kw["optimizer"]
    opt = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name](
        local.parameters(), **{"lr": setup.lr, **{k: v for k, v in kw.items() if k != "optimizer"}})
    for batch in client_batch_order(setup, client_generators(0)[0]):
        opt.zero_grad()
        F.cross_entropy(local(x[batch]), y[batch]).backward()
        opt.step()
    for (n, p), p0 in zip(local.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(update.tensors[n], p.detach() - p0, rtol=1e-5, atol=1e-7)
    if name == "adam":  # Adam's first step moves every parameter with a gradient by about lr
        moved = update.tensors["net.3.weight"].abs()
        assert moved.max() < 2 * 4 * 0.01 + 1e-6


def test_label_smoothing_changes_the_gradient():
    model, (x, y) = _model(), _data()
    plain = client_update(model, x, y, _setup(), seed=0)
    smooth = client_update(model, x, y, _setup(label_smoothing=0.2), seed=0)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y, label_smoothing=0.2),
                                list(model.parameters()))
    for (n, _), g in zip(model.named_parameters(), grads, strict=True):
        torch.testing.assert_close(smooth.tensors[n], g)
    assert not torch.allclose(plain.tensors["net.3.weight"], smooth.tensors["net.3.weight"])


def test_augmentation_uses_the_client_seed_only():
    model, (x, y) = _model(), _data()
    setup = _setup(protocol="fedavg", local_epochs=2, batch_size=2, augment="crop_flip")
    a = client_update(model, x, y, setup, seed=4)
    b = client_update(model, x, y, setup, seed=4)
    c = client_update(model, x, y, setup, seed=5)
    plain = client_update(model, x, y, _setup(protocol="fedavg", local_epochs=2, batch_size=2),
                          seed=4)
    key = "net.0.0.weight"
    assert torch.equal(a.tensors[key], b.tensors[key])
    assert not torch.equal(a.tensors[key], c.tensors[key])
    assert not torch.allclose(a.tensors[key], plain.tensors[key])
    # The global RNG is neither used nor advanced by the client.
    torch.manual_seed(9)
    expected = torch.rand(1)
    torch.manual_seed(9)
    client_update(model, x, y, setup, seed=4)
    assert torch.equal(torch.rand(1), expected)


def test_bad_training_values_are_one_line_errors():
    cases = [
        ({"protocol": "fedsgd", "optimizer": "adam"}, "client.optimizer needs client.protocol=fedavg"),
        ({"protocol": "fedavg", "optimizer": "adam", "momentum": 0.9}, "apply to client.optimizer=sgd"),
        ({"protocol": "fedavg", "nesterov": True}, "nesterov=true needs client.momentum > 0"),
        ({"protocol": "fedavg", "label_smoothing": 1.0}, "client.label_smoothing: must be in"),
    ]
    for kw, message in cases:
        with pytest.raises(GradleakError, match=message) as info:
            _setup(**kw)
        assert "\n" not in str(info.value)
    for item, message in [("client.optimizer=rmsprop", "allowed: sgd, adam, adamw"),
                          ("client.augment=mixup", "allowed: none, flip, crop_flip"),
                          ("client.bn_mode=half", "allowed: auto, eval, train"),
                          ("client.momentum=-1", "must be >= 0")]:
        with pytest.raises(GradleakError, match=message):
            load_config(None, [item])
    with pytest.raises(GradleakError, match="needs client.protocol=fedavg"):
        ClientSetup("fedsgd", 1, 2, 0.1, 2, local_train=lambda *a: {})


def test_user_local_train_function():
    model, (x, y) = _model(), _data()

    def two_steps(net, params, buffers, images, labels, generator):
        for _ in range(2):
            i = torch.randint(0, len(labels), (2,), generator=generator)
            logits = torch.func.functional_call(net, (params, buffers), (images[i],))
            loss = F.cross_entropy(logits, labels[i])
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            params = {n: p - 0.1 * g for (n, p), g in zip(params.items(), grads, strict=True)}
        return params

    setup = ClientSetup.from_config(ClientConfig(protocol="fedavg"), 4, local_train=two_steps)
    update = client_update(model, x, y, setup, seed=2)
    again = client_update(model, x, y, setup, seed=2)
    assert update.kind == "model_delta" and set(update.tensors) == {n for n, _ in
                                                                     model.named_parameters()}
    assert all(torch.equal(update.tensors[k], again.tensors[k]) for k in update.tensors)
    assert update.tensors["net.3.weight"].abs().sum() > 0
    with pytest.raises(GradleakError, match="missing 'net.0.0.weight'"):
        client_update(model, x, y, ClientSetup.from_config(
            ClientConfig(protocol="fedavg"), 4, local_train=lambda *a: {}), seed=0)


def test_train_mode_bn_on_single_values_is_a_one_line_error():
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 2, 8), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 4))
    model, (x, y) = prepare_user_model(net, normalize=False), _data(2)
    setup = _setup(2, protocol="fedavg", batch_size=1)
    with pytest.raises(GradleakError, match="bn_mode=train .* batches of 1.*bn_mode=eval"):
        client_update(model, x, y, setup, seed=0)
    client_update(model, x, y, _setup(2, protocol="fedavg", batch_size=1, bn_mode="eval"), seed=0)
