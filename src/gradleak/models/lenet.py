"""The sigmoid LeNet of DLG (Zhu et al. 2019): three 5x5 convs with sigmoid, one linear layer.

Pair it with ``model.init=uniform`` (U(-0.5, 0.5)) for the DLG demo setting in which L-BFGS
is known to converge. Input ``[B, C, R, R]`` -> logits ``[B, classes]``.
"""

from __future__ import annotations

import torch
from torch import nn

from gradleak.config import ModelConfig
from gradleak.models import register_model


@register_model("lenet")
def build_lenet(cfg: ModelConfig, *, num_classes: int, channels: int,
                resolution: int) -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(channels, 12, 5, padding=2, stride=2), nn.Sigmoid(),
        nn.Conv2d(12, 12, 5, padding=2, stride=2), nn.Sigmoid(),
        nn.Conv2d(12, 12, 5, padding=2, stride=1), nn.Sigmoid(),
    )
    with torch.no_grad():
        flat = features(torch.zeros(1, channels, resolution, resolution)).numel()
    return nn.Sequential(features, nn.Flatten(), nn.Linear(flat, num_classes))
