"""Helpers shared by the torchvision model zoo (VGG, ResNet, DenseNet, GoogLeNet, Inception, Swin).

Every zoo model is built with ``weights=None`` (no download) and takes ``channels`` input
channels. ``model.norm`` is honoured natively where torchvision has a ``norm_layer`` argument
(ResNet) or where we build the layers ourselves (VGG, DenseNet-43/53); elsewhere (DenseNet-121,
GoogLeNet, Inception-v3) :func:`swap_batchnorm` replaces the BatchNorm layers after building.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from gradleak.models.base import make_norm


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``make_norm``, but GroupNorm uses ``gcd(32, channels)`` groups: the zoo has widths such as
    208 (GoogLeNet) or 80 (DenseNet-43 transitions) that 32 groups do not divide."""
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    return make_norm(kind, channels)


def swap_batchnorm(net: nn.Module, kind: str) -> nn.Module:
    """Replace every ``BatchNorm2d`` of ``net`` by ``norm_layer(kind, channels)`` (no-op for batch)."""
    if kind == "batch":
        return net
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, norm_layer(kind, child.num_features))
    return net


def init_like(modules: list[nn.Module], init: Callable[[torch.Tensor], object]) -> None:
    """Initialise the weights of replaced conv/linear layers like the rest of their network."""
    with torch.no_grad():
        for m in modules:
            for sub in m.modules():
                if isinstance(sub, (nn.Conv2d, nn.Linear)):
                    init(sub.weight)
                    if sub.bias is not None:
                        nn.init.zeros_(sub.bias)
