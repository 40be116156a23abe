"""ResNet-18 from torchvision with a CIFAR stem (3x3 conv, stride 1, no max-pool) for 32 px."""

from __future__ import annotations

from functools import partial

from torch import nn
from torchvision.models import resnet18

from gradleak.config import ModelConfig
from gradleak.models import register_model
from gradleak.models.base import make_norm


@register_model("resnet18")
def build_resnet18(cfg: ModelConfig, *, num_classes: int, channels: int,
                   resolution: int) -> nn.Module:
    net = resnet18(weights=None, num_classes=num_classes, norm_layer=partial(make_norm, cfg.norm))
    net.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net
