"""Flat value clipping (the paper's "C", App. C, citing McMahan et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradleak.defenses import check_param, map_float, register_defense
from gradleak.defenses.surrogate import SurrogateOptions, Transform, register_surrogate, straight_through
from gradleak.update import SharedUpdate


@register_defense("clip")
def clip(update: SharedUpdate, *, generator: torch.Generator | None = None,
         bound: float = 0.1) -> SharedUpdate:
    """Value clipping: clamp every entry of every tensor to [-bound, bound].

    App. C: "ensures the gradient values are all in a predefined bound by clipping extreme
    values", grid bound in [0.01, 0.5] (ResNet-18) / [0.1, 1] (Swin). Entries already inside are
    unchanged. For the L2-norm reading of McMahan et al.'s flat clipping see ``clip_norm``.
    Deterministic: ``generator`` is unused.
    """
    check_param(bound > 0, "bound", bound, "> 0")
    return map_float(update, lambda t: t.clamp(-bound, bound))


@register_surrogate("clip")
def clip_surrogate(params: dict, observed: Sequence[torch.Tensor] | None,
                   options: SurrogateOptions) -> Transform:
    """Forward clamp to [-bound, bound]; backward the identity (``ste``) or the clamp's own
    a.e. gradient (``clamp``: zero on every clipped entry)."""
    bound = float(params.get("bound", 0.1))
    if options.clip == "clamp":
        return lambda grads: [g.clamp(-bound, bound) for g in grads]
    return lambda grads: [straight_through(g.clamp(-bound, bound), g) for g in grads]
