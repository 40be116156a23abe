"""A fully connected network: flatten -> hidden layers (``model.hidden``) -> logits."""

from __future__ import annotations

from torch import nn

from gradleak.config import ModelConfig
from gradleak.models import register_model
from gradleak.models.base import make_activation


@register_model("mlp")
def build_mlp(cfg: ModelConfig, *, num_classes: int, channels: int, resolution: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = channels * resolution * resolution
    for hidden in cfg.hidden:
        layers += [nn.Linear(width, hidden, bias=cfg.bias), make_activation(cfg.activation)]
        width = hidden
    layers.append(nn.Linear(width, num_classes, bias=cfg.bias))
    return nn.Sequential(*layers)
