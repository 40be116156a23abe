"""Geiping et al.'s configurable ConvNet (NeurIPS 2020), with the SoK's micro-design switches.

Every micro design of the paper's Tab. 4 is a switch: ``bias``, ``activation`` (ReLU or not),
``dropout``, ``pooling`` (max), ``kernel_size`` and ``padding``; plus ``norm`` and ``width``.
Conv layer i has ``width * 2**min(i, 2)`` channels; two pooling layers sit after the first and
second thirds of the stack. Input ``[B, C, R, R]`` -> logits ``[B, classes]``.
"""

from __future__ import annotations

import torch
from torch import nn

from gradleak.config import ModelConfig
from gradleak.models import register_model
from gradleak.models.base import make_activation, make_norm


def _pool_positions(depth: int) -> set[int]:
    return {max(0, round(depth * k / 3) - 1) for k in (1, 2)}


@register_model("convnet")
def build_convnet(cfg: ModelConfig, *, num_classes: int, channels: int,
                  resolution: int) -> nn.Module:
    layers: list[nn.Module] = []
    in_ch = channels
    pools = _pool_positions(cfg.depth) if cfg.pooling != "none" else set()
    for i in range(cfg.depth):
        out_ch = cfg.width * 2 ** min(i, 2)
        layers += [
            nn.Conv2d(in_ch, out_ch, cfg.kernel_size, padding=cfg.padding, bias=cfg.bias),
            make_norm(cfg.norm, out_ch),
            make_activation(cfg.activation),
        ]
        if i in pools:
            layers.append(nn.MaxPool2d(2) if cfg.pooling == "max" else nn.AvgPool2d(2))
        in_ch = out_ch
    features = nn.Sequential(*layers)
    with torch.no_grad():
        flat = features(torch.zeros(1, channels, resolution, resolution)).numel()
    return nn.Sequential(
        features,
        nn.Flatten(),
        nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity(),
        nn.Linear(flat, num_classes, bias=cfg.bias),
    )
