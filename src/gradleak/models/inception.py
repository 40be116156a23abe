"""Net-in-net models of the paper's Tab. 3: GoogLeNet (Szegedy et al. 2015) and Inception-v3 (2016).

Both from torchvision with ``weights=None``, ``aux_logits=False``, ``transform_input=False``
(our :class:`~gradleak.models.base.Classifier` already normalises) and ``dropout=model.dropout``.
``model.norm`` swaps their BatchNorms after building.

``model.small_input=true`` (default) adapts the ImageNet stems to 32 px:

* GoogLeNet: ``conv1`` becomes a 3x3 stride-1 conv and ``maxpool2`` is dropped (``maxpool1``
  stays, so the costly 3x3 ``conv3`` runs at 16x16), so ``inception3a/3b`` run at 16x16,
  ``4a-4e`` at 8x8 and ``5a/5b`` at 4x4 (the native stem would leave 2x2 and 1x1).
* Inception-v3 needs >= 75 px natively (its stem shrinks 299 -> 35 with a stride-2 conv, two
  stride-2 pools and unpadded convs). Here ``Conv2d_1a_3x3`` becomes a 3x3 stride-1 conv with
  padding 1, ``Conv2d_2a_3x3`` and ``Conv2d_4a_3x3`` get padding 1 and ``maxpool2`` is dropped;
  ``maxpool1`` (3x3, stride 2) stays. At 32 px the Mixed_5 blocks see 15x15, Mixed_6b-e 7x7 and
  Mixed_7b/c 3x3 (the native 35/17/8 at 299 px, scaled down). ``small_input=false`` keeps
  torchvision's stems (Inception-v3 then refuses inputs below 75 px).

Replaced stem convs are initialised like torchvision does (truncated normal). Input
``[B, C, R, R]`` -> logits ``[B, classes]``.
"""

from __future__ import annotations

from functools import partial

from torch import nn
from torchvision.models import GoogLeNet, Inception3
from torchvision.models.inception import BasicConv2d

from gradleak.config import ModelConfig
from gradleak.errors import GradleakError
from gradleak.models import register_model
from gradleak.models.zoo import init_like, swap_batchnorm

INCEPTION_V3_MIN_RESOLUTION = 75


def _trunc_normal(std: float):
    return partial(nn.init.trunc_normal_, mean=0.0, std=std, a=-2, b=2)


@register_model("googlenet")
def build_googlenet(cfg: ModelConfig, *, num_classes: int, channels: int,
                    resolution: int) -> nn.Module:
    """GoogLeNet / Inception-v1: nine inception blocks (inception3a ... inception5b)."""
    net = GoogLeNet(num_classes=num_classes, aux_logits=False, transform_input=False,
                    init_weights=True, dropout=cfg.dropout)
    if cfg.small_input:
        net.conv1 = BasicConv2d(channels, 64, kernel_size=3, stride=1, padding=1)
        net.maxpool2 = nn.Identity()
    elif channels != 3:
        net.conv1 = BasicConv2d(channels, 64, kernel_size=7, stride=2, padding=3)
    if cfg.small_input or channels != 3:
        init_like([net.conv1], _trunc_normal(0.01))
    return swap_batchnorm(net, cfg.norm)


@register_model("inception_v3")
def build_inception_v3(cfg: ModelConfig, *, num_classes: int, channels: int,
                       resolution: int) -> nn.Module:
    """Inception-v3: eleven Mixed blocks (Mixed_5b ... Mixed_7c); 32 px via small_input."""
    if not cfg.small_input and resolution < INCEPTION_V3_MIN_RESOLUTION:
        raise GradleakError(f"inception_v3 with model.small_input=false needs data.resolution >= "
                            f"{INCEPTION_V3_MIN_RESOLUTION}, got {resolution}; set "
                            "model.small_input=true")
    net = Inception3(num_classes=num_classes, aux_logits=False, transform_input=False,
                     init_weights=True, dropout=cfg.dropout)
    if cfg.small_input:
        net.Conv2d_1a_3x3 = BasicConv2d(channels, 32, kernel_size=3, stride=1, padding=1)
        # Padding the two unpadded stem convs keeps their weights (and init) unchanged.
        net.Conv2d_2a_3x3.conv.padding = (1, 1)
        net.Conv2d_4a_3x3.conv.padding = (1, 1)
        net.maxpool2 = nn.Identity()
    elif channels != 3:
        net.Conv2d_1a_3x3 = BasicConv2d(channels, 32, kernel_size=3, stride=2)
    if cfg.small_input or channels != 3:
        init_like([net.Conv2d_1a_3x3], _trunc_normal(0.1))
    return swap_batchnorm(net, cfg.norm)
