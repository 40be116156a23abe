"""ResNet-18 from torchvision with a CIFAR stem (3x3 conv, stride 1, no max-pool) for 32 px.

Built by :func:`gradleak.models.residual.build_resnet`, which also applies ``model.small_input``
(``false``: torchvision's ImageNet stem) and ``model.skip_cuts`` (8 BasicBlocks, paper Fig. 9).
"""

from __future__ import annotations

from torch import nn

from gradleak.config import ModelConfig
from gradleak.models import register_model
from gradleak.models.residual import build_resnet


@register_model("resnet18")
def build_resnet18(cfg: ModelConfig, *, num_classes: int, channels: int,
                   resolution: int) -> nn.Module:
    """ResNet-18 (He et al. 2016): 8 BasicBlocks; supports model.skip_cuts (Fig. 9)."""
    return build_resnet("resnet18", cfg, num_classes=num_classes, channels=channels)
