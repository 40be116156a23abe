"""L2-norm clipping of the whole update (McMahan et al., ICLR 2018, "flat clipping")."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradleak.defenses import check_param, float_tensors, map_float, register_defense
from gradleak.defenses.surrogate import SurrogateOptions, Transform, register_surrogate, scale_to_norm
from gradleak.errors import GradleakError
from gradleak.update import SharedUpdate


def total_norm(update: SharedUpdate) -> torch.Tensor:
    """L2 norm of all floating-point tensors concatenated."""
    norms = [torch.linalg.vector_norm(t) for t in float_tensors(update).values()]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


@register_defense("clip_norm")
def clip_l2_norm(update: SharedUpdate, *, generator: torch.Generator | None = None,
                 clip_norm: float | None = None) -> SharedUpdate:
    """L2-norm clipping: scale the whole update by min(1, C / ||update||_2), C = ``clip_norm``.

    The norm is over all tensors concatenated (McMahan et al.'s flat clipping), so every tensor is
    scaled by the same factor; an update with norm <= C is returned unchanged (as copies). Note
    that a cosine-similarity attack is blind to this pure rescaling. Deterministic.
    """
    check_param(clip_norm is not None and clip_norm > 0, "clip_norm", clip_norm,
                "a number > 0 for defense 'clip_norm'")
    factor = torch.clamp(clip_norm / total_norm(update).clamp_min(1e-12), max=1.0)
    return map_float(update, lambda t: t * factor.to(t))


@register_surrogate("clip_norm")
def clip_norm_surrogate(params: dict, observed: Sequence[torch.Tensor] | None,
                        options: SurrogateOptions) -> Transform:
    """Scale by min(1, C / ||g||) over all matched tensors (exact and differentiable)."""
    c = params.get("clip_norm")
    if c is None or not c > 0:
        raise GradleakError(f"bad value {c!r} for defense.clip_norm: must be a number > 0")
    return lambda grads: scale_to_norm(list(grads), float(c))
