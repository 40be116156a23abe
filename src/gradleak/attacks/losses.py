"""Gradient distances, composable over a chosen subset of layers with per-layer weights.

Each takes two equal-length lists of tensors (dummy and observed, layer by layer) and returns a
scalar tensor that is differentiable in the first list.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _weights(n: int, weights: Sequence[float] | None) -> Sequence[float]:
    return weights if weights is not None else [1.0] * n


def cosine_distance(dummy: Sequence[torch.Tensor], observed: Sequence[torch.Tensor],
                    weights: Sequence[float] | None = None) -> torch.Tensor:
    """1 - cosine similarity of the layers' gradients taken jointly as one vector
    (Geiping et al. 2020, Eq. 4)."""
    dot = dummy[0].new_zeros(())
    norm_d = dummy[0].new_zeros(())
    norm_o = dummy[0].new_zeros(())
    for w, d, o in zip(_weights(len(dummy), weights), dummy, observed, strict=True):
        dot = dot + w * (d * o).sum()
        norm_d = norm_d + w * d.pow(2).sum()
        norm_o = norm_o + w * o.pow(2).sum()
    return 1 - dot / (norm_d.sqrt() * norm_o.sqrt()).clamp_min(1e-12)


def l2_distance(dummy: Sequence[torch.Tensor], observed: Sequence[torch.Tensor],
                weights: Sequence[float] | None = None) -> torch.Tensor:
    """Sum of squared differences over layers (DLG, Zhu et al. 2019)."""
    total = dummy[0].new_zeros(())
    for w, d, o in zip(_weights(len(dummy), weights), dummy, observed, strict=True):
        total = total + w * (d - o).pow(2).sum()
    return total


DISTANCES = {"cosine": cosine_distance, "l2": l2_distance}
