"""Top-k sparsification (Eghlidi & Jaggi 2020; the paper's "S", App. C)."""

from __future__ import annotations

import torch

from gradleak.defenses import check_param, map_tensors, register_defense
from gradleak.fl.client import SharedUpdate


def kept_count(n: int, sparsity: float) -> int:
    """k = round((1 - sparsity) * n): how many of ``n`` entries survive."""
    return round((1.0 - sparsity) * n)


def keep_largest(v: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Zero all but the k = round((1 - sparsity) * n) largest-|v_i| entries of a flat ``v``; among
    equal magnitudes the lower index wins (a stable sort), so the result is deterministic."""
    k = kept_count(v.numel(), sparsity)
    keep = torch.argsort(v.abs(), descending=True, stable=True)[:k]
    out = torch.zeros_like(v)
    out[keep] = v[keep]
    return out


@register_defense("topk")
def topk(update: SharedUpdate, *, generator: torch.Generator | None = None, sparsity: float = 0.9,
         per_tensor: bool = True) -> SharedUpdate:
    """Top-k sparsification: zero the fraction ``sparsity`` of smallest-magnitude entries.

    Each tensor with n entries keeps exactly k = round((1 - sparsity) * n) entries of largest
    |v_i| (ties: lower flat index first) and zeroes the rest; with ``per_tensor=False`` k is taken
    over the whole update. ``sparsity`` is the fraction *zeroed*: App. C's grid p in
    [0.6, ..., 0.95] is read as the pruned proportion. Deterministic: ``generator`` is unused.
    """
    check_param(0.0 <= sparsity <= 1.0, "sparsity", sparsity, "in [0, 1] (the fraction zeroed)")
    return map_tensors(update, lambda v: keep_largest(v, sparsity), per_tensor=per_tensor)
