"""signSGD (Bernstein et al., ICML 2018; the paper's 1-bit quantisation, App. C)."""

from __future__ import annotations

import torch

from gradleak.defenses import map_tensors, register_defense
from gradleak.fl.client import SharedUpdate


def _sign(v: torch.Tensor, scale: bool) -> torch.Tensor:
    return torch.sign(v) * v.abs().mean() if scale else torch.sign(v)


@register_defense("signsgd")
def signsgd(update: SharedUpdate, *, generator: torch.Generator | None = None,
            scale_sign: bool = False, per_tensor: bool = True) -> SharedUpdate:
    """signSGD: share only the sign of every entry (Bernstein et al. 2018).

    Each tensor ``v`` becomes sign(v) in {-1, 0, +1} (0 only where v_i = 0). With ``scale_sign``
    it becomes mean(|v|) * sign(v), so magnitudes stay comparable to the raw update; the mean is
    per tensor, or over the whole update with ``per_tensor=False``. Deterministic: ``generator``
    is unused.
    """
    return map_tensors(update, lambda v: _sign(v, scale_sign), per_tensor=per_tensor)
