"""Label inference from the last layer's gradient (the paper's GIA-A label attacks).

All rules read the update's *gradient direction*: a FedAvg model delta is -lr * (sum of
gradients), so it is negated first (see :meth:`SharedUpdate.gradient_direction`).
"""

from __future__ import annotations

import torch
from torch import nn

from gradleak.errors import GradleakError
from gradleak.registry import Registry

LABEL_RULES: Registry = Registry("label rule")


def last_layer_gradients(model: nn.Module, direction: dict[str, torch.Tensor]
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The last linear layer's weight gradient ``[C, D]`` and bias gradient ``[C]`` (or None)."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise GradleakError("label inference needs a final linear layer; the model has none")
    name = linears[-1]
    weight = direction[f"{name}.weight"]
    bias = direction.get(f"{name}.bias")
    return weight, bias


@LABEL_RULES.register("idlg")
def idlg_labels(weight: torch.Tensor, bias: torch.Tensor | None, count: int) -> list[int]:
    """iDLG (Zhao et al. 2020): for one sample with non-negative last-layer inputs, only the true
    class row has a negative sum."""
    if count != 1:
        raise GradleakError(
            f"attack.labels=idlg infers the label of one sample, but data.num_samples={count}; "
            "use attack.labels=yin for a batch with distinct labels"
        )
    return [int(weight.sum(dim=1).argmin())]


@LABEL_RULES.register("yin")
def yin_labels(weight: torch.Tensor, bias: torch.Tensor | None, count: int) -> list[int]:
    """Yin et al. 2021 (GradInversion): the ``count`` classes whose rows have the smallest minimum
    entry; exact for distinct labels when ``count <= C``."""
    classes = weight.shape[0]
    if count > classes:
        raise GradleakError(
            f"attack.labels=yin assumes distinct labels, but data.num_samples={count} exceeds "
            f"the {classes} classes"
        )
    return sorted(weight.min(dim=1).values.argsort()[:count].tolist())


def infer_labels(rule: str, model: nn.Module, direction: dict[str, torch.Tensor],
                 count: int) -> list[int]:
    """Infer ``count`` labels with the named rule (see ``LABEL_RULES.names()``)."""
    weight, bias = last_layer_gradients(model, direction)
    return LABEL_RULES.get(rule)(weight.detach(), None if bias is None else bias.detach(), count)
