"""Gaussian perturbation (local DP style, Naseri et al. 2020; the paper's "P", App. C)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradleak.defenses import check_param, map_float, random_like, register_defense
from gradleak.defenses.clip_norm import clip_l2_norm
from gradleak.defenses.surrogate import SurrogateOptions, Transform, register_surrogate, scale_to_norm
from gradleak.update import SharedUpdate


def noise_std(noise_multiplier: float, clip_norm: float | None = None) -> float:
    """sigma = noise_multiplier * C with L2 clipping to C first, else noise_multiplier * 1."""
    return noise_multiplier * (clip_norm if clip_norm is not None else 1.0)


@register_defense("gaussian")
def gaussian(update: SharedUpdate, *, generator: torch.Generator | None = None,
             noise_multiplier: float = 0.1, clip_norm: float | None = None) -> SharedUpdate:
    """Gaussian noise: add i.i.d. N(0, sigma^2) to every entry of every tensor (Naseri et al. 2020).

    Without ``clip_norm``, sigma = ``noise_multiplier`` in absolute units (App. C's multipliers
    0.05-0.25, ResNet-18, and 0.005-0.05, Swin, read as the noise std). With ``clip_norm`` = C the
    update is first L2-clipped to C (see ``clip_norm``) and sigma = noise_multiplier * C: the
    Gaussian mechanism of DP-SGD / DP-FedAvg. Noise comes from ``generator``, so one seed gives
    one draw.
    """
    check_param(noise_multiplier >= 0, "noise_multiplier", noise_multiplier, ">= 0")
    if clip_norm is not None:
        update = clip_l2_norm(update, clip_norm=clip_norm)
    sigma = noise_std(noise_multiplier, clip_norm)
    return map_float(update, lambda t: t + sigma * random_like(t, generator, "normal"))


@register_surrogate("gaussian")
def gaussian_surrogate(params: dict, observed: Sequence[torch.Tensor] | None,
                       options: SurrogateOptions) -> Transform:
    """Fresh noise cannot be simulated: the identity, or clip_norm's scaling when set."""
    c = params.get("clip_norm")
    return (lambda grads: scale_to_norm(list(grads), c)) if c is not None else (lambda g: list(g))
