"""The client's local-training pieces: optimisers, augmentation, and their differentiable replay.

The client trains with the real ``torch.optim`` optimisers (:func:`make_optimizer`); the WST
attacker (``threat.knows_client_config``) replays the same update rules as pure functions of the
parameters (:func:`functional_step`), so its simulated model difference stays differentiable in
the dummy images. Both follow PyTorch's update rules (dampening 0, no AMSGrad):

SGD:   g <- g + wd p;  b <- g (first step) or mu b + g;  g <- g + mu b (Nesterov) or b;
       p <- p - lr g
Adam:  g <- g + wd p (adam) or p <- p (1 - lr wd) (adamw);  m <- b1 m + (1 - b1) g;
       v <- b2 v + (1 - b2) g^2;  p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

Augmentation (``flip``: random horizontal flips; ``crop_flip``: CIFAR's random crop after zero
padding by R/8 pixels, then flips) draws from the client's own generator; the attacker cannot
replay it sample by sample and replays without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

OPTIMIZERS = ("sgd", "adam", "adamw")
AUGMENTATIONS = ("none", "flip", "crop_flip")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def make_optimizer(params: list[torch.Tensor], *, optimizer: str, lr: float, momentum: float,
                   nesterov: bool, weight_decay: float) -> torch.optim.Optimizer:
    """The client's ``torch.optim`` optimiser (what a real client's training code builds)."""
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov,
                               weight_decay=weight_decay)
    cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=weight_decay)


@dataclass
class OptimizerState:
    """The replayed optimiser's state: step count, momentum buffers or Adam's two moments."""

    step: int = 0
    buffers: list[torch.Tensor] = field(default_factory=list)
    exp_avg: list[torch.Tensor] = field(default_factory=list)
    exp_avg_sq: list[torch.Tensor] = field(default_factory=list)


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (not infinite) derivative where ``v == 0``: a parameter whose gradient
    is exactly 0 (a dead ReLU's weights) would otherwise turn the image gradient into NaN."""
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(),
                       torch.zeros_like(v))


def functional_step(params: list[torch.Tensor], grads: list[torch.Tensor], state: OptimizerState,
                    *, optimizer: str, lr: float, momentum: float, nesterov: bool,
                    weight_decay: float) -> list[torch.Tensor]:
    """One optimiser step as a pure function (new tensors; differentiable through ``grads``)."""
    state.step += 1
    if optimizer == "sgd":
        return _sgd_step(params, grads, state, lr, momentum, nesterov, weight_decay)
    return _adam_step(params, grads, state, lr, weight_decay, decoupled=optimizer == "adamw")


def _sgd_step(params, grads, state, lr, momentum, nesterov, weight_decay):
    out = []
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        if weight_decay:
            g = g + weight_decay * p
        if momentum:
            if state.step == 1:
                state.buffers.append(g)
                buf = g
            else:
                buf = momentum * state.buffers[i] + g
                state.buffers[i] = buf
            g = g + momentum * buf if nesterov else buf
        out.append(p - lr * g)
    return out


def _adam_step(params, grads, state, lr, weight_decay, *, decoupled: bool):
    b1, b2 = ADAM_BETAS
    if state.step == 1:
        state.exp_avg = [torch.zeros_like(p) for p in params]
        state.exp_avg_sq = [torch.zeros_like(p) for p in params]
    bias1 = 1 - b1 ** state.step
    bias2_sqrt = math.sqrt(1 - b2 ** state.step)
    out = []
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        if weight_decay and decoupled:
            p = p * (1 - lr * weight_decay)
        elif weight_decay:
            g = g + weight_decay * p
        m = b1 * state.exp_avg[i] + (1 - b1) * g
        v = b2 * state.exp_avg_sq[i] + (1 - b2) * g * g
        state.exp_avg[i], state.exp_avg_sq[i] = m, v
        out.append(p - (lr / bias1) * m / (_safe_sqrt(v) / bias2_sqrt + ADAM_EPS))
    return out


def augment(images: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """``images [B, C, H, W]`` augmented per sample (``none``, ``flip``, ``crop_flip``)."""
    if kind == "none":
        return images
    n, _, h, w = images.shape
    out = images
    if kind == "crop_flip":
        pad = max(1, h // 8)  # 4 px at CIFAR's 32 px, as torchvision's RandomCrop(32, padding=4)
        padded = F.pad(images, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).tolist()
        out = torch.stack([padded[i, :, dy:dy + h, dx:dx + w]
                           for i, (dy, dx) in enumerate(offsets)])
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)
