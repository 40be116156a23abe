"""Gradient distances, composable over a chosen subset of layers with per-layer weights.

Each takes two equal-length lists of tensors (dummy and observed, layer by layer) and returns a
scalar tensor that is differentiable in the first list.

The cosine and L2 distances are fused autograd functions: the forward pass reduces each layer
with one BLAS dot product and the backward pass writes each layer's gradient in one or two
passes. The plain autograd version spends most of an attack iteration in element-wise
temporaries on large layers (on the MLP's 1.5 M-weight first layer an attack iteration went from
21 ms to 12 ms; see ``benchmarks/attack_speed.py``). The gradient is first order only: the GIA-O
engine never differentiates a distance twice, and the backward refuses a second differentiation
instead of returning a silently wrong one. If an observed tensor requires grad, the plain
autograd formula is used.

"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from gradleak.attacks.lowrank import LowRankGradient


def _floor(denom: torch.Tensor) -> float:
    """The smallest denominator the cosine divides by: the dtype's smallest normal number.

    Only an all-zero gradient needs the guard. A fixed floor such as 1e-12 is a scale: gradients
    with norms near 1e-8 (a fitted model, one block of a deep network) have |d| |o| ~ 1e-16, and
    a 1e-12 floor pins the distance at ~1 with no gradient, so the attack silently stops moving."""
    return torch.finfo(denom.dtype).tiny


def _weights(n: int, weights: Sequence[float] | None) -> Sequence[float]:
    return weights if weights is not None else [1.0] * n


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.dot(a.reshape(-1), b.reshape(-1))


class _Cosine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weights: Sequence[float], n: int, *tensors: torch.Tensor) -> torch.Tensor:
        dummy, observed = tensors[:n], tensors[n:]
        dot = norm_d = norm_o = dummy[0].new_zeros(())
        for w, d, o in zip(weights, dummy, observed, strict=True):
            dot = dot + w * _dot(d, o)
            norm_d = norm_d + w * _dot(d, d)
            norm_o = norm_o + w * _dot(o, o)
        denom = norm_d.sqrt() * norm_o.sqrt()
        ctx.save_for_backward(*tensors)
        ctx.weights, ctx.n, ctx.stats = weights, n, (dot, norm_d, denom)
        return 1 - dot / denom.clamp_min(_floor(denom))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        tensors, n = ctx.saved_tensors, ctx.n
        dot, norm_d, denom = ctx.stats
        # d/dd_i (1 - dot / (|d| |o|)) = w_i (-o_i / (|d| |o|) + dot d_i / (|d|^3 |o|))
        floor = _floor(denom)
        clamped = bool(denom < floor)
        c_obs = -grad / denom.clamp_min(floor)
        c_dummy = 0.0 if clamped else float(grad * dot / (denom * norm_d))
        grads = [None] * len(tensors)
        for i, (w, d, o) in enumerate(zip(ctx.weights, tensors[:n], tensors[n:], strict=True)):
            if ctx.needs_input_grad[2 + i]:
                grads[i] = (o * (w * c_obs)).add_(d, alpha=w * c_dummy)
        return (None, None, *grads)


class _L2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weights: Sequence[float], n: int, *tensors: torch.Tensor) -> torch.Tensor:
        diffs = [d - o for d, o in zip(tensors[:n], tensors[n:], strict=True)]
        total = diffs[0].new_zeros(())
        for w, diff in zip(weights, diffs, strict=True):
            total = total + w * _dot(diff, diff)
        ctx.save_for_backward(*diffs)
        ctx.weights = weights
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        grads = [diff * (2 * w * grad) if ctx.needs_input_grad[2 + i] else None
                 for i, (w, diff) in enumerate(zip(ctx.weights, ctx.saved_tensors, strict=True))]
        return (None, None, *grads, *[None] * len(grads))


def _plain_cosine(dummy, observed, weights) -> torch.Tensor:
    dot = norm_d = norm_o = dummy[0].new_zeros(())
    for w, d, o in zip(weights, dummy, observed, strict=True):
        dot = dot + w * (d * o).sum()
        norm_d = norm_d + w * d.pow(2).sum()
        norm_o = norm_o + w * o.pow(2).sum()
    denom = norm_d.sqrt() * norm_o.sqrt()
    return 1 - dot / denom.clamp_min(_floor(denom))


def _plain_l2(dummy, observed, weights) -> torch.Tensor:
    total = dummy[0].new_zeros(())
    for w, d, o in zip(weights, dummy, observed, strict=True):
        total = total + w * (d - o).pow(2).sum()
    return total


def _check(dummy: Sequence[torch.Tensor], observed: Sequence[torch.Tensor]) -> None:
    if len(dummy) != len(observed) or not dummy:
        raise ValueError(f"a gradient distance needs two equal, non-empty lists of tensors; got "
                         f"{len(dummy)} and {len(observed)}")


def _factored_cosine(dummy, observed, weights) -> torch.Tensor:
    """The cosine distance where some dummy entries are factored (``LowRankGradient``)."""
    dot = norm_d = norm_o = observed[0].new_zeros(())
    for w, d, o in zip(weights, dummy, observed, strict=True):
        if isinstance(d, LowRankGradient):
            dot, norm_d = dot + w * d.dot(o), norm_d + w * d.squared_norm()
        else:
            dot, norm_d = dot + w * _dot(d, o), norm_d + w * _dot(d, d)
        norm_o = norm_o + w * _dot(o, o)
    denom = norm_d.sqrt() * norm_o.sqrt()
    return 1 - dot / denom.clamp_min(_floor(denom))


def cosine_distance(dummy: Sequence[torch.Tensor | LowRankGradient], observed: Sequence[torch.Tensor],
                    weights: Sequence[float] | None = None) -> torch.Tensor:
    """1 - cosine similarity of the layers' gradients taken jointly as one vector
    (Geiping et al. 2020, Eq. 4). Dummy entries may be factored linear-layer gradients
    (:class:`gradleak.attacks.lowrank.LowRankGradient`)."""
    _check(dummy, observed)
    w = list(_weights(len(dummy), weights))
    if any(isinstance(d, LowRankGradient) for d in dummy):
        return _factored_cosine(dummy, observed, w)
    if any(o.requires_grad for o in observed):
        return _plain_cosine(dummy, observed, w)
    return _Cosine.apply(w, len(dummy), *dummy, *observed)


def l2_distance(dummy: Sequence[torch.Tensor], observed: Sequence[torch.Tensor],
                weights: Sequence[float] | None = None) -> torch.Tensor:
    """Sum of squared differences over layers (DLG, Zhu et al. 2019)."""
    _check(dummy, observed)
    w = list(_weights(len(dummy), weights))
    dummy = [d.dense() if isinstance(d, LowRankGradient) else d for d in dummy]
    if any(o.requires_grad for o in observed):
        return _plain_l2(dummy, observed, w)
    return _L2.apply(w, len(dummy), *dummy, *observed)


def l1l2_distance(dummy: Sequence[torch.Tensor], observed: Sequence[torch.Tensor],
                  weights: Sequence[float] | None = None, *, l1: float = 0.01) -> torch.Tensor:
    """Squared L2 plus ``l1`` x L1 over layers (TAG, Deng et al., EMNLP Findings 2021; the L1
    weight 0.01 of LAMP's reimplementation, ``--tag_factor``)."""
    _check(dummy, observed)
    w = list(_weights(len(dummy), weights))
    total = dummy[0].new_zeros(())
    for wi, d, o in zip(w, dummy, observed, strict=True):
        d = d.dense() if isinstance(d, LowRankGradient) else d
        diff = d - o
        total = total + wi * (diff.pow(2).sum() + l1 * diff.abs().sum())
    return total


DISTANCES = {"cosine": cosine_distance, "l2": l2_distance, "l1l2": l1l2_distance}


def distance_for(settings: Any) -> Callable[..., torch.Tensor]:
    """The ``attack.distance`` function of ``settings``, its own weights bound (``l1_weight``)."""
    name = settings.distance
    if name == "l1l2":
        return functools.partial(l1l2_distance, l1=getattr(settings, "l1_weight", 0.01))
    return DISTANCES[name]

# Plain autograd formulas (twice differentiable, torch.func-compatible): the functional and
# compiled objective (gradleak.attacks.functional) uses these.
PLAIN_DISTANCES = {"cosine": _plain_cosine, "l2": _plain_l2}
