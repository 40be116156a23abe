"""torchvision ResNets (18/34/50/152) with a CIFAR stem and the paper's skip-connection cuts (Fig. 9).

``model.small_input=true`` (default): 3x3 stride-1 ``conv1`` and no max-pool, so a 32 px input
reaches ``layer4`` at 4x4 (torchvision's ImageNet stem would leave 1x1). ``model.norm`` is
passed as torchvision's ``norm_layer``.

``model.skip_cuts=[i, ...]``: the i-th residual block (1-based, in forward order over
``layer1..layer4``; ResNet-18 has 8 BasicBlocks, ResNet-34 16, ResNet-50 16 Bottlenecks,
ResNet-152 50) loses its identity/shortcut path: it returns ``relu(bn2(conv2(relu(bn1(conv1(x))))))``
(Bottleneck: through ``conv3``/``bn3``) without adding ``x``. A cut block that had a projection
shortcut (``downsample``) drops it with its parameters, since nothing would read them. Parameter
names of the kept layers are unchanged. Input ``[B, C, R, R]`` -> logits ``[B, classes]``.
"""

from __future__ import annotations

from functools import partial

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from gradleak.config import ModelConfig
from gradleak.errors import GradleakError
from gradleak.models import register_model
from gradleak.models.base import make_norm


class SkipCutBlock(nn.Module):
    """A ResNet block whose identity path is removed: ``out = relu(branch(x))`` (paper Fig. 9).

    Keeps the original block's conv/norm submodules (same parameter names); ``identity`` is
    ``False`` so tools and tests can tell a cut block from an intact one.
    """

    identity = False

    def __init__(self, block: BasicBlock | Bottleneck) -> None:
        super().__init__()
        self.bottleneck = isinstance(block, Bottleneck)
        self.conv1, self.bn1 = block.conv1, block.bn1
        self.conv2, self.bn2 = block.conv2, block.bn2
        if self.bottleneck:
            self.conv3, self.bn3 = block.conv3, block.bn3
        self.relu = block.relu
        self.stride = block.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.bottleneck:
            out = self.bn3(self.conv3(self.relu(out)))
        return self.relu(out)


def residual_blocks(net: ResNet) -> list[tuple[str, nn.Module]]:
    """``(name, block)`` of every residual block in forward order, e.g. ``("layer1.0", ...)``."""
    return [(f"{layer}.{i}", block) for layer in ("layer1", "layer2", "layer3", "layer4")
            for i, block in enumerate(getattr(net, layer))]


def cut_skips(net: ResNet, cuts: list[int]) -> ResNet:
    """Replace the blocks numbered ``cuts`` (1-based) by :class:`SkipCutBlock` in place."""
    blocks = residual_blocks(net)
    for index in sorted(set(cuts)):
        if not 1 <= index <= len(blocks):
            raise GradleakError(f"bad value {index} in model.skip_cuts: this ResNet has "
                                f"{len(blocks)} residual blocks, numbered 1-{len(blocks)}")
        name, block = blocks[index - 1]
        layer, i = name.split(".")
        getattr(net, layer)[int(i)] = SkipCutBlock(block)
    return net


def build_resnet(arch: str, cfg: ModelConfig, *, num_classes: int, channels: int) -> ResNet:
    """torchvision ``arch`` (weights=None) with ``cfg``'s norm, stem and skip cuts applied."""
    net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes,
                                            norm_layer=partial(make_norm, cfg.norm))
    if cfg.small_input:
        net.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
    return cut_skips(net, cfg.skip_cuts)


@register_model("resnet34")
def build_resnet34(cfg: ModelConfig, *, num_classes: int, channels: int,
                   resolution: int) -> nn.Module:
    """ResNet-34 (He et al. 2016): 16 BasicBlocks; supports model.skip_cuts (Fig. 9)."""
    return build_resnet("resnet34", cfg, num_classes=num_classes, channels=channels)


@register_model("resnet50")
def build_resnet50(cfg: ModelConfig, *, num_classes: int, channels: int,
                   resolution: int) -> nn.Module:
    """ResNet-50 (He et al. 2016): 16 Bottleneck blocks."""
    return build_resnet("resnet50", cfg, num_classes=num_classes, channels=channels)


@register_model("resnet152")
def build_resnet152(cfg: ModelConfig, *, num_classes: int, channels: int,
                    resolution: int) -> nn.Module:
    """ResNet-152 (He et al. 2016): 50 Bottleneck blocks."""
    return build_resnet("resnet152", cfg, num_classes=num_classes, channels=channels)
