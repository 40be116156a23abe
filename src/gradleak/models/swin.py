"""Swin-T (Liu et al. 2021), the paper's transformer in Sec. 6, from torchvision (``weights=None``).

Swin-T layout: embed dim 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24). Stochastic depth is 0
and ``dropout=model.dropout`` (torchvision trains with 0.2 stochastic depth, which would make
client gradients random). ``model.small_input=true`` (default): 2x2 patches and 4x4 windows, so
32 px gives 16/8/4/2 tokens per side over the four stages; ``false``: torchvision's 4x4 patches
and 7x7 windows (8/4/2/1 at 32 px; torchvision pads windows and disables shifts that do not fit).
Swin normalises with LayerNorm: ``model.norm=batch`` (the default) keeps it, ``none`` removes it,
``group`` is refused. Input ``[B, C, R, R]`` -> logits ``[B, classes]``.
"""

from __future__ import annotations

from functools import partial

from torch import nn
from torchvision.models.swin_transformer import SwinTransformer

from gradleak.config import ModelConfig
from gradleak.errors import GradleakError
from gradleak.models import register_model


@register_model("swin_t")
def build_swin_t(cfg: ModelConfig, *, num_classes: int, channels: int,
                 resolution: int) -> nn.Module:
    """Swin-T: 12 Swin blocks in 4 stages; small_input uses 2x2 patches and 4x4 windows."""
    if cfg.norm == "group":
        raise GradleakError("swin_t uses LayerNorm: model.norm=batch keeps it, none removes it; "
                            "group is not supported")
    norm_layer = partial(nn.LayerNorm, eps=1e-5) if cfg.norm == "batch" else (lambda _d: nn.Identity())
    patch, window = ([2, 2], [4, 4]) if cfg.small_input else ([4, 4], [7, 7])
    net = SwinTransformer(patch_size=patch, embed_dim=96, depths=[2, 2, 6, 2],
                          num_heads=[3, 6, 12, 24], window_size=window, dropout=cfg.dropout,
                          stochastic_depth_prob=0.0, num_classes=num_classes, norm_layer=norm_layer)
    if channels != 3:
        net.features[0][0] = nn.Conv2d(channels, 96, kernel_size=patch, stride=patch)
    return net
