"""signSGD (Bernstein et al., ICML 2018; the paper's 1-bit quantisation, App. C)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradleak.defenses import map_tensors, register_defense
from gradleak.defenses.surrogate import SurrogateOptions, Transform, register_surrogate, straight_through
from gradleak.update import SharedUpdate


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


@register_surrogate("signsgd")
def signsgd_surrogate(params: dict, observed: Sequence[torch.Tensor] | None,
                      options: SurrogateOptions) -> Transform:
    """Straight-through: forward sign(g) (times mean |g| with ``scale_sign``), backward the
    identity; or ``tanh``: tanh(g / (0.1 * mean |g|))."""
    scale_sign, per_tensor = bool(params.get("scale_sign", False)), bool(params.get("per_tensor", True))

    def signs(grads: list[torch.Tensor]) -> list[torch.Tensor]:
        if per_tensor:
            scales = [g.abs().mean() for g in grads]
        else:
            scales = [torch.cat([g.reshape(-1) for g in grads]).abs().mean()] * len(grads)
        out = []
        for g, s in zip(grads, scales, strict=True):
            if options.sign == "tanh":
                soft = torch.tanh(g / (0.1 * g.detach().abs().mean()).clamp_min(1e-12))
                out.append(soft * s if scale_sign else soft)
            else:
                hard = torch.sign(g) * s if scale_sign else torch.sign(g)
                out.append(straight_through(hard, g * s if scale_sign else g))
        return out

    return lambda grads: signs(list(grads))
