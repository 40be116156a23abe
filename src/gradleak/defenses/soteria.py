"""Soteria (Sun et al., "Soteria: Provable Defense against Privacy Leakage in Federated Learning
from Representation Perspective", CVPR 2021): prune the representation layer's gradient.

The representation ``r [B, d]`` is the input of the fully connected layer that reads it (the
classifier of Soteria's LeNet / ConvNet; here by default the model's last ``nn.Linear``). For
every feature f the client scores ``s_f = sum_b ||dr_bf / dx_b|| / (r_bf + 0.1)`` on its own
inputs (the published ``GS_attack/reconstruct_image.py``; its DLG notebook divides by ``r_bf``
alone, which is infinite on a dead ReLU feature) and zeroes the columns of the layer's weight
gradient ``[out, d]`` of the ``round(rate * d)`` features with the smallest score: the features
whose removal moves a reconstruction the most (large ``||r|| / ||dr/dx||``; the paper's Eq. 8
with its ``||r|| / ||dr/dx||`` approximation). Every other tensor, the layer's bias included, is
shared unchanged. Default rate 0.6: the published command for the GS (Inverting Gradients)
attack on the ConvNet, ``--defense=ours --pruning_rate=60`` (README of jeremy313/Soteria).

It needs the model the client received and the client's inputs, so it is a training-time
defense (``context=True``, see :mod:`gradleak.defenses`): the scores are computed once per
round, in eval mode as the published code does, with the gradient taken in pixel space (the
published code differentiates in normalised space: a per-channel factor). For FedAvg the mask of
the received model prunes the shared delta's columns (the paper's analysis is for one gradient).

Its adaptive attack (Balunović et al., ICLR 2022, "Bayesian framework for gradient leakage")
matches every layer but the defended one: registered here as the exclusion of the pruned
weight from the adaptive attacker's matched tensors (``attack.adaptive=true``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from gradleak.defenses import check_param, register_defense, training_time_error
from gradleak.defenses.surrogate import (
    SurrogateOptions,
    Transform,
    identity,
    register_exclusion,
    register_surrogate,
)
from gradleak.errors import GradleakError
from gradleak.update import SharedUpdate

SHIFT = 0.1  # the published denominator r + 0.1: keeps a dead ReLU feature finite (it scores 0)
CHUNK = 256  # features whose input gradients are computed in one batched backward


def representation_layer(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Linear]:
    """The module name and the ``nn.Linear`` reading the representation: ``layer`` (a module
    name, with or without the Classifier's ``net.`` prefix) or the model's last ``nn.Linear``."""
    modules = dict(model.named_modules())
    if layer is None:
        linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        if not linear:
            raise GradleakError(f"defense soteria needs a model with an nn.Linear layer reading "
                                f"the representation; {type(model).__name__} has none")
        layer = linear[-1]
    name = layer if layer in modules else f"net.{layer}"
    if not isinstance(modules.get(name), nn.Linear):
        found = type(modules[name]).__name__ if name in modules else "no such module"
        raise GradleakError(f"bad value {layer!r} for defense.soteria_layer: must name an "
                            f"nn.Linear module of the model ({found})")
    return name, modules[name]


def feature_scores(model: nn.Module, inputs: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    """Soteria's score per representation feature, ``[d]``: ``sum_b ||dr_bf/dx_b|| /
    (r_bf + 0.1)`` for inputs ``[B, C, H, W]`` (eval mode, on a copy of ``model``)."""
    local = copy.deepcopy(model).eval()
    name, linear = representation_layer(local, layer)
    captured: list[torch.Tensor] = []
    handle = linear.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    x = inputs.detach().clone().requires_grad_(True)
    try:
        local(x)
    finally:
        handle.remove()
    r = captured[0].reshape(len(x), -1)  # [B, d]
    d = r.shape[1]
    norms = []
    for start in range(0, d, CHUNK):
        k = min(CHUNK, d - start)
        # One-hot on feature f for every sample at once: samples do not interact in eval mode,
        # so x_b's gradient is dr_bf / dx_b (the published loop, batched over features).
        onehot = torch.zeros(k, *r.shape, dtype=r.dtype, device=r.device)
        onehot[torch.arange(k), :, start + torch.arange(k)] = 1.0
        (g,) = torch.autograd.grad(r, x, grad_outputs=onehot, is_grads_batched=True,
                                   retain_graph=True)
        norms.append(torch.linalg.vector_norm(g.reshape(k, len(x), -1), dim=2))  # [k, B]
    norm = torch.cat(norms).T  # [B, d]
    return (norm / (r.detach() + SHIFT)).sum(0)


def pruned_features(scores: torch.Tensor, rate: float) -> torch.Tensor:
    """Indices of the ``round(rate * d)`` smallest scores (ties: lower index first)."""
    k = round(rate * scores.numel())
    return torch.argsort(scores, stable=True)[:k]


def _describe(model: nn.Module, *, soteria_layer: str | None = None, **_: Any) -> dict[str, Any]:
    name, linear = representation_layer(model, soteria_layer)
    return {"soteria_layer": f"{name}.weight", "representation_features": linear.in_features}


@register_defense("soteria", context=True, describe=_describe)
def soteria(update: SharedUpdate, *, generator: torch.Generator | None = None,
            model: nn.Module | None = None, inputs: torch.Tensor | None = None, round_: int = 1,
            soteria_rate: float = 0.6, soteria_layer: str | None = None) -> SharedUpdate:
    """Soteria (Sun et al., CVPR 2021): zero the representation layer's weight-gradient columns
    of the fraction ``soteria_rate`` of features with the smallest published score, computed on
    the client's ``inputs [N, C, H, W]`` and ``model``; every other tensor is unchanged.
    Deterministic: ``generator`` and ``round_`` are unused."""
    check_param(0.0 <= soteria_rate <= 1.0, "soteria_rate", soteria_rate,
                "in [0, 1] (the fraction of features pruned)")
    if model is None or inputs is None:
        raise training_time_error("soteria")
    name, _ = representation_layer(model, soteria_layer)
    key = f"{name}.weight"
    if key not in update.tensors:
        raise GradleakError(f"defense soteria: the update has no {key!r} (the representation "
                            "layer's weight); is that layer frozen?")
    pruned = pruned_features(feature_scores(model, inputs, soteria_layer), soteria_rate)
    weight = update.tensors[key].clone()
    weight[:, pruned.to(weight.device)] = 0
    return update.replace({**update.tensors, key: weight})


@register_surrogate("soteria")
def soteria_surrogate(params: dict, observed: Sequence[torch.Tensor] | None,
                      options: SurrogateOptions) -> Transform:
    """The matched tensors are shared unchanged (the pruned one is not matched): identity."""
    return identity(params, observed, options)


@register_exclusion("soteria")
def soteria_unmatched(params: dict, model: nn.Module) -> frozenset[str]:
    """Balunović et al. 2022: match every layer but the defended one (its pruned weight)."""
    name, _ = representation_layer(model, params.get("soteria_layer"))
    return frozenset({f"{name}.weight"})
