"""The client's optimisers and their functional replay; augmentation."""

from __future__ import annotations

import pytest
import torch

from gradleak.fl.training import OptimizerState, augment, functional_step, make_optimizer

SETTINGS = [
    {"optimizer": "sgd", "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    {"optimizer": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4},
    {"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 0.0},
    {"optimizer": "adam", "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    {"optimizer": "adam", "momentum": 0.0, "nesterov": False, "weight_decay": 1e-2},
    {"optimizer": "adamw", "momentum": 0.0, "nesterov": False, "weight_decay": 1e-2},
]


@pytest.mark.parametrize("kw", SETTINGS, ids=lambda k: f"{k['optimizer']}-{k['momentum']}-"
                         f"{k['nesterov']}-{k['weight_decay']}")
def test_functional_step_matches_torch_optim(kw):
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 3, generator=g), torch.randn(4, generator=g)]
    grads = [[torch.randn(p.shape, generator=g) for p in start] for _ in range(4)]
    grads[1][1][0] = 0.0  # an exactly-zero gradient entry (Adam's v stays 0 there at first)
    real = [p.clone().requires_grad_(True) for p in start]
    opt = make_optimizer(real, lr=0.05, **kw)
    params, state = [p.clone() for p in start], OptimizerState()
    for step in grads:
        for p, gr in zip(real, step, strict=True):
            p.grad = gr.clone()
        opt.step()
        params = functional_step(params, step, state, lr=0.05, **kw)
        for a, b in zip(params, real, strict=True):
            torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-7)
    assert state.step == 4


def test_adam_replay_has_finite_image_gradients_at_zero_gradients():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    p = [torch.zeros(2)]
    grads = [torch.stack([x[0] * 0.0, x[1]])]  # entry 0 has a zero gradient: v = 0
    out = functional_step(p, grads, OptimizerState(), optimizer="adam", lr=0.1, momentum=0.0,
                          nesterov=False, weight_decay=0.0)
    (dx,) = torch.autograd.grad(out[0].sum(), x)
    assert torch.isfinite(dx).all()
    assert out[0][0] == 0 and torch.isclose(out[0][1], torch.tensor(-0.1), atol=1e-6)


def test_augment_flip_and_crop():
    images = torch.rand(16, 3, 8, 8)
    assert augment(images, "none", torch.Generator()) is images
    flipped = augment(images, "flip", torch.Generator().manual_seed(0))
    same = [torch.equal(a, b) for a, b in zip(flipped, images, strict=True)]
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(flipped, images, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert any(same) and any(mirrored)
    again = augment(images, "crop_flip", torch.Generator().manual_seed(1))
    assert torch.equal(again, augment(images, "crop_flip", torch.Generator().manual_seed(1)))
    assert again.shape == images.shape
    # A crop is a window of the zero-padded image (pad 1 at 8 px): every output pixel is either
    # 0 (padding) or one of the input's pixels shifted by at most 1.
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    for i in range(16):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(again[i], w) or torch.equal(again[i], w.flip(-1)) for w in windows)
    assert not torch.equal(again, images)
