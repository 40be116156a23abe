"""Shared model pieces: input normalisation and the norm/activation factories."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """Wraps a network so it takes images in [0, 1]: ``[B, C, H, W] -> logits [B, classes]``.

    Normalisation lives inside the model so that attacks, clients and metrics all work in pixel
    space, where the box constraint [0, 1] is exact.
    """

    def __init__(self, net: nn.Module, *, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("input_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.input_mean) / self.input_std)


def forward_with_penalty(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``model(x)`` and the sum of the training penalties its modules add to the client's loss
    (a module with ``penalty(input) -> scalar``, e.g. PRECODE's KL term), or None if none has."""
    terms: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, args, _out: terms.append(m.penalty(args[0])))
               for m in model.modules() if callable(getattr(m, "penalty", None))]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, (torch.stack(terms).sum() if terms else None)


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels)
    return nn.Identity()


def make_activation(kind: str) -> nn.Module:
    return {
        "relu": nn.ReLU,
        "leaky_relu": nn.LeakyReLU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "none": nn.Identity,
    }[kind]()
