"""Named blocks of a model and their parameters, for block-wise gradient attacks (paper Tab. 3).

A *block* is the outermost module of a known block type: GoogLeNet ``inception3a`` ...
``inception5b``, Inception-v3 ``Mixed_5b`` ... ``Mixed_7c``, ResNet ``layer1.0`` ...
(intact or skip-cut), DenseNet ``features.denseblock1`` / ``features.transition1`` (DenseNet-121)
and ``denseblock1`` / ``transition1`` (DenseNet-43/53), Swin ``features.1.0`` ... (one Swin
block each). Models without such blocks (ConvNet, MLP, LeNet, VGG) fall back to their
parameterised layers (``0.0``, ``features.3``, ...). Block names are relative to the
:class:`~gradleak.models.base.Classifier`'s ``net``; parameter names are full
(``net.inception3a.branch1.conv.weight``), as in shared updates.

Attack only one block's gradient with ``attack.layers=[inception3a]``: ``select_layers`` retries a
prefix that matches nothing as ``net.<prefix>`` (``attack.layers=[net.inception3a]`` works too).
"""

from __future__ import annotations

from torch import nn
from torchvision.models.densenet import _DenseBlock, _Transition
from torchvision.models.googlenet import Inception
from torchvision.models.inception import InceptionA, InceptionB, InceptionC, InceptionD, InceptionE
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.swin_transformer import SwinTransformerBlock

from gradleak.errors import GradleakError
from gradleak.models.densenet import DenseBlock, Transition
from gradleak.models.residual import SkipCutBlock

BLOCK_TYPES: tuple[type[nn.Module], ...] = (
    Inception, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE,
    BasicBlock, Bottleneck, SkipCutBlock, _DenseBlock, _Transition, DenseBlock, Transition,
    SwinTransformerBlock,
)


def _root(model: nn.Module) -> tuple[nn.Module, str]:
    net = getattr(model, "net", None)
    return (net, "net.") if isinstance(net, nn.Module) else (model, "")


def named_blocks(model: nn.Module) -> dict[str, list[str]]:
    """Block name -> full names of its trainable parameters, in forward (registration) order."""
    root, prefix = _root(model)
    blocks: dict[str, list[str]] = {}

    def visit(module: nn.Module, name: str) -> None:
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, BLOCK_TYPES):
                params = [f"{prefix}{full}.{n}" for n, p in child.named_parameters() if p.requires_grad]
                if params:
                    blocks[full] = params
            else:
                visit(child, full)

    visit(root, "")
    if blocks:
        return blocks
    for name, module in root.named_modules():
        params = [f"{prefix}{name}.{n}" for n, p in module.named_parameters(recurse=False)
                  if p.requires_grad]
        if params:
            blocks[name] = params
    return blocks


def block_parameters(model: nn.Module, block: str) -> list[str]:
    """Parameter names of ``block`` (bare, e.g. ``inception3a``, or ``net.inception3a``)."""
    blocks = named_blocks(model)
    _, prefix = _root(model)
    key = block[len(prefix):] if prefix and block.startswith(prefix) else block
    if key not in blocks:
        shown = ", ".join(list(blocks)[:12])
        raise GradleakError(f"unknown block {block!r}; this model's blocks: {shown}"
                            + (", ..." if len(blocks) > 12 else ""))
    return blocks[key]


def block_share(model: nn.Module, block: str) -> float:
    """Fraction of all trainable parameter values that belong to ``block`` (Tab. 3's ratio)."""
    sizes = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    return sum(sizes[n] for n in block_parameters(model, block)) / sum(sizes.values())
