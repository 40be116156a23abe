"""VGG-11/16/19 (Simonyan & Zisserman 2015) with torchvision's layer configs and initialisation.

``features`` follows ``torchvision.models.vgg.cfgs`` ("A", "D", "E"): 3x3 convs, ``model.norm``
after each conv (``batch`` = torchvision's ``vgg*_bn``, ``none`` = plain ``vgg*``), ReLU, five 2x2
max-pools. With ``model.small_input=true`` (default) the classifier is sized for the 1x1x512
feature map a 32 px input leaves: global average pool -> (dropout) -> ``Linear(512, classes)``
(the usual CIFAR VGG); ``false`` keeps torchvision's 7x7 pool and 4096-4096 head (~120M
parameters). Dropout is ``model.dropout`` (default 0, so client gradients are deterministic).
Input ``[B, C, R, R]`` (R >= 32) -> logits ``[B, classes]``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vgg import cfgs

from gradleak.config import ModelConfig
from gradleak.models import register_model
from gradleak.models.zoo import norm_layer


class VGG(nn.Module):
    """``features -> avgpool -> flatten -> classifier`` with torchvision's module names."""

    def __init__(self, layout: list[str | int], cfg: ModelConfig, *, num_classes: int,
                 channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = channels
        for v in layout:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers.append(nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1))
            if cfg.norm != "none":
                layers.append(norm_layer(cfg.norm, int(v)))
            layers.append(nn.ReLU(inplace=True))
            in_ch = int(v)
        self.features = nn.Sequential(*layers)
        drop = [nn.Dropout(cfg.dropout)] if cfg.dropout > 0 else []
        if cfg.small_input:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.classifier = nn.Sequential(*drop, nn.Linear(512, num_classes))
        else:
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), *drop,
                nn.Linear(4096, 4096), nn.ReLU(True), *drop,
                nn.Linear(4096, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's VGG initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model("vgg11")
def build_vgg11(cfg: ModelConfig, *, num_classes: int, channels: int, resolution: int) -> nn.Module:
    """VGG-11 (config "A"): 8 convs."""
    return VGG(cfgs["A"], cfg, num_classes=num_classes, channels=channels)


@register_model("vgg16")
def build_vgg16(cfg: ModelConfig, *, num_classes: int, channels: int, resolution: int) -> nn.Module:
    """VGG-16 (config "D"): 13 convs."""
    return VGG(cfgs["D"], cfg, num_classes=num_classes, channels=channels)


@register_model("vgg19")
def build_vgg19(cfg: ModelConfig, *, num_classes: int, channels: int, resolution: int) -> nn.Module:
    """VGG-19 (config "E"): 16 convs."""
    return VGG(cfgs["E"], cfg, num_classes=num_classes, channels=channels)
