"""Top-k sparsification (Eghlidi & Jaggi 2020; the paper's "S", App. C)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradleak.defenses import check_param, map_tensors, register_defense
from gradleak.defenses.surrogate import SurrogateOptions, Transform, register_surrogate
from gradleak.errors import GradleakError
from gradleak.update import SharedUpdate


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


def _kept_minimum(observed: list[torch.Tensor], per_tensor: bool) -> list[float]:
    """tau: the smallest non-zero magnitude per tensor (or over all tensors); inf if none kept."""
    mins = [float(t[t != 0].abs().min()) if bool((t != 0).any()) else float("inf") for t in observed]
    return mins if per_tensor else [min(mins, default=float("inf"))] * len(observed)


def _own_masks(grads: list[torch.Tensor], sparsity: float, per_tensor: bool) -> list[torch.Tensor]:
    """The defense's own top-k masks of the (detached) dummy gradient."""
    if per_tensor:
        return [keep_largest(g.detach().reshape(-1).abs() + 1e-30, sparsity).reshape(g.shape) != 0
                for g in grads]
    flat = torch.cat([g.detach().reshape(-1).abs() + 1e-30 for g in grads])
    kept = keep_largest(flat, sparsity) != 0
    return [m.reshape(g.shape) for m, g in zip(kept.split([g.numel() for g in grads]), grads,
                                               strict=True)]


@register_surrogate("topk")
def topk_surrogate(params: dict, observed: Sequence[torch.Tensor] | None,
                   options: SurrogateOptions) -> Transform:
    """The observed update's non-zero mask (the attacker sees which entries survived): kept
    entries pass; with ``threshold`` a dropped entry passes only its excess over tau (the
    smallest kept magnitude), ``mask`` zeroes it. Without an observed update: the dummy's own
    top-k mask."""
    per_tensor = bool(params.get("per_tensor", True))
    if observed is None:
        sparsity = float(params.get("sparsity", 0.9))
        return lambda grads: [g * m.to(g.dtype) for g, m in
                              zip(grads, _own_masks(list(grads), sparsity, per_tensor), strict=True)]
    masks = [t != 0 for t in observed]
    taus = _kept_minimum(list(observed), per_tensor)

    def masked(grads: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(grads) != len(masks):
            raise GradleakError(f"adaptive topk: {len(grads)} dummy tensors but {len(masks)} "
                                "observed ones")
        out = []
        for g, m, tau in zip(grads, masks, taus, strict=True):
            dropped = (g - g.clamp(-tau, tau) if options.topk == "threshold"
                       else torch.zeros_like(g))
            out.append(torch.where(m.to(g.device), g, dropped))
        return out

    return masked
