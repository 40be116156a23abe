"""DenseNets: torchvision's DenseNet-121 and the compact DenseNet-43/53 of the paper's Fig. 10.

``densenet121`` (Huang et al. 2017): torchvision, ``weights=None``, ``drop_rate=model.dropout``.
With ``model.small_input=true`` (default) the stem is a 3x3 stride-1 conv without the max-pool, so
32 px reaches the last dense block at 4x4. ``model.norm`` swaps the BatchNorms after building.

``densenet43`` / ``densenet53``: the CIFAR DenseNets the paper takes from Ju et al. 2022
("Connection Reduction of DenseNet for Image Recognition", the SoK's [43]), rebuilt from their
reference code: a 7x7 stride-1 stem (64 channels), four dense blocks of 3x3 convs (growth 32,
with bias, ReLU after each conv, one norm on the block input), transitions
``1x1 conv (c -> c/2) -> ReLU -> norm -> 2x2 avg-pool``, a final norm and
``Linear(flat, 512) -> Linear(512, classes)``. Block configs (layers per block): DenseNet-43
``(8, 10, 12, 8)``, DenseNet-53 ``(10, 12, 16, 8)`` as in that code (38 resp. 46 dense convs plus
the stem and four transition convs; the names are Ju et al.'s). The input needs R >= 16.

``model.dense_connections`` picks which earlier maps each layer k of a block reads. Index 0 is
the block input, which -- as in Ju et al.'s baseline -- only layer 1 reads directly; h_j is
layer j's output and the block's output is what a virtual layer n + 1 would read:

* ``full``: h_1 .. h_(k-1) (every earlier map of the block: the baseline);
* ``reduced``: h_1 and h_(k-1): the block's first map, which carries the block input, and the
  immediate predecessor (our reading of "the block input and its predecessor": taking the raw
  input instead would add a connection the baseline lacks);
* ``minimal``: h_(k-1) only: a plain chain, no dense connection left;
* ``shortnet1`` / ``shortnet2``: Ju et al.'s ShortNet1/2 patterns (their "variants"), with
  m = k - 1: ShortNet1 reads h_1, h_m and every h_j (2 <= j < m) with m - j odd; ShortNet2 reads
  h_(m-1), h_m for odd m and h_m, h_(m-1), h_(m-3), h_(m-7) for even m. Transitions halve
  whatever the block outputs (Ju et al.'s ShortNet1 code uses 128 after the last block instead).

Input ``[B, C, R, R]`` -> logits ``[B, classes]``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import densenet121

from gradleak.config import ModelConfig
from gradleak.errors import GradleakError
from gradleak.models import register_model
from gradleak.models.zoo import init_like, norm_layer, swap_batchnorm

DENSE_CONFIGS: dict[str, tuple[int, ...]] = {"densenet43": (8, 10, 12, 8), "densenet53": (10, 12, 16, 8)}
GROWTH = 32


def dense_sources(pattern: str, k: int) -> list[int]:
    """Maps read by layer ``k`` (1-based; ``k = n + 1`` is the block output); 0 = block input."""
    if k == 1:
        return [0]
    m = k - 1
    if pattern == "full":
        chosen = set(range(1, k))
    elif pattern == "reduced":
        chosen = {1, m}
    elif pattern == "minimal":
        chosen = {m}
    elif pattern == "shortnet1":
        chosen = {1, m} | {j for j in range(2, m) if (m - j) % 2 == 1}
    elif pattern == "shortnet2":
        chosen = {m, m - 1} if m % 2 == 1 else {m, m - 1, m - 3, m - 7}
        chosen = {j for j in chosen if j >= 1}
    else:
        raise GradleakError(f"bad value {pattern!r} for model.dense_connections")
    return sorted(chosen)


class DenseBlock(nn.Module):
    """One dense block: ``layers[k-1]`` is a 3x3 conv reading ``cat(maps[j] for j in sources[k-1])``.

    ``[B, C_in, H, W] -> [B, growth * len(sources[-1]), H, W]``.
    """

    def __init__(self, in_channels: int, num_layers: int, *, growth: int, pattern: str,
                 norm: str) -> None:
        super().__init__()
        self.pattern = pattern
        self.sources = [dense_sources(pattern, k) for k in range(1, num_layers + 2)]
        self.norm = norm_layer(norm, in_channels)
        self.layers = nn.ModuleList(
            nn.Conv2d(in_channels if k == 0 else growth * len(src), growth, 3, padding=1)
            for k, src in enumerate(self.sources[:-1]))
        self.relu = nn.ReLU()
        self.out_channels = growth * len(self.sources[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = [self.norm(x)]
        for conv, src in zip(self.layers, self.sources[:-1], strict=True):
            maps.append(self.relu(conv(torch.cat([maps[j] for j in src], 1))))
        return torch.cat([maps[j] for j in self.sources[-1]], 1)


class Transition(nn.Sequential):
    """``1x1 conv (c -> c/2) -> ReLU -> norm -> 2x2 avg-pool`` (Ju et al.'s order)."""

    def __init__(self, in_channels: int, norm: str) -> None:
        out = in_channels // 2
        super().__init__(nn.Conv2d(in_channels, out, 1), nn.ReLU(), norm_layer(norm, out),
                         nn.AvgPool2d(2, 2))
        self.out_channels = out


class CompactDenseNet(nn.Module):
    """Ju et al.'s CIFAR DenseNet with configurable dense connections (see module doc)."""

    def __init__(self, block_config: tuple[int, ...], cfg: ModelConfig, *, num_classes: int,
                 channels: int, resolution: int) -> None:
        super().__init__()
        side = resolution // 2 ** len(block_config)
        if side < 1:
            raise GradleakError(f"DenseNet with {len(block_config)} transitions needs "
                                f"data.resolution >= {2 ** len(block_config)}, got {resolution}")
        self.firstconv = nn.Conv2d(channels, 64, 7, padding=3, bias=False)
        self.relu = nn.ReLU()
        width = 64
        for i, n in enumerate(block_config, 1):
            block = DenseBlock(width, n, growth=GROWTH, pattern=cfg.dense_connections, norm=cfg.norm)
            transition = Transition(block.out_channels, cfg.norm)
            self.add_module(f"denseblock{i}", block)
            self.add_module(f"transition{i}", transition)
            width = transition.out_channels
        self.num_blocks = len(block_config)
        self.norm = norm_layer(cfg.norm, width)
        self.pre_classifier = nn.Linear(width * side * side, 512)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.firstconv(x))
        for i in range(1, self.num_blocks + 1):
            out = getattr(self, f"transition{i}")(getattr(self, f"denseblock{i}")(out))
        return self.classifier(self.pre_classifier(torch.flatten(self.norm(out), 1)))


@register_model("densenet43")
def build_densenet43(cfg: ModelConfig, *, num_classes: int, channels: int,
                     resolution: int) -> nn.Module:
    """DenseNet-43 (Ju et al. 2022): blocks (8, 10, 12, 8); model.dense_connections (Fig. 10)."""
    return CompactDenseNet(DENSE_CONFIGS["densenet43"], cfg, num_classes=num_classes,
                           channels=channels, resolution=resolution)


@register_model("densenet53")
def build_densenet53(cfg: ModelConfig, *, num_classes: int, channels: int,
                     resolution: int) -> nn.Module:
    """DenseNet-53 (Ju et al. 2022): blocks (10, 12, 16, 8); model.dense_connections (Fig. 10)."""
    return CompactDenseNet(DENSE_CONFIGS["densenet53"], cfg, num_classes=num_classes,
                           channels=channels, resolution=resolution)


@register_model("densenet121")
def build_densenet121(cfg: ModelConfig, *, num_classes: int, channels: int,
                      resolution: int) -> nn.Module:
    """DenseNet-121 (Huang et al. 2017), torchvision; 3x3 stem without pool at small_input."""
    net = densenet121(weights=None, num_classes=num_classes, drop_rate=cfg.dropout)
    if cfg.small_input:
        net.features.conv0 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        net.features.pool0 = nn.Identity()
    elif channels != 3:
        net.features.conv0 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
    if cfg.small_input or channels != 3:
        init_like([net.features.conv0], nn.init.kaiming_normal_)  # torchvision's DenseNet init
    return swap_batchnorm(net, cfg.norm)
