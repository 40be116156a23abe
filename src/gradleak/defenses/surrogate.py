"""Differentiable surrogates of the defenses, for the adaptive attacker (``attack.adaptive``).

Each defense registers its surrogate beside itself with ``@register_surrogate(name)``: a factory
``surrogate(params, observed, options) -> Transform`` where ``params`` are the defense's
settings (named after :class:`~gradleak.config.DefenseConfig` fields), ``observed`` the defended
update's tensors in the order of the attacker's dummy list (or None), ``options`` the
:class:`SurrogateOptions`, and a ``Transform`` maps the list of dummy gradient tensors
``[tensor of shape p_i.shape, ...]`` to their defended version, differentiably.
See :mod:`gradleak.attacks.adaptive` for the measured choice of defaults.

A defense whose adaptive attack leaves tensors out of the matching (Soteria's pruned layer) also
registers ``@register_exclusion(name)``: ``exclusion(params, model) -> frozenset`` of parameter
names the adaptive attacker does not match.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradleak.errors import GradleakError
from gradleak.registry import Registry

Transform = Callable[[list[torch.Tensor]], list[torch.Tensor]]
Surrogate = Callable[[dict[str, Any], Sequence[torch.Tensor] | None, "SurrogateOptions"], Transform]
SURROGATES: Registry = Registry("defense surrogate")
EXCLUSIONS: Registry = Registry("defense exclusion")

_CHOICES = {"sign": ("ste", "tanh"), "clip": ("ste", "clamp"), "topk": ("threshold", "mask")}


@dataclass(frozen=True)
class SurrogateOptions:
    """Which surrogate to use where a defense has several (see :mod:`gradleak.attacks.adaptive`)."""

    sign: str = "ste"
    clip: str = "ste"
    topk: str = "threshold"

    def __post_init__(self) -> None:
        for label, allowed in _CHOICES.items():
            value = getattr(self, label)
            if value not in allowed:
                raise GradleakError(f"bad {label} surrogate {value!r}; allowed: {', '.join(allowed)}")


def register_surrogate(name: str) -> Callable[[Surrogate], Surrogate]:
    return SURROGATES.register(name)


def register_exclusion(name: str) -> Callable[[Callable[..., frozenset[str]]],
                                               Callable[..., frozenset[str]]]:
    return EXCLUSIONS.register(name)


def excluded_names(name: str, params: dict[str, Any], model: Any) -> frozenset[str]:
    """The parameters the adaptive attacker leaves out against defense ``name`` (none unless it
    registered an exclusion)."""
    return EXCLUSIONS.get(name)(params, model) if name in EXCLUSIONS else frozenset()


def identity(_params: dict[str, Any], _observed: Sequence[torch.Tensor] | None,
             _options: SurrogateOptions) -> Transform:
    """For unbiased or unsimulable post-processing: the expectation passes straight through.
    Marked ``is_identity`` so an attack can drop it and keep its fast paths."""
    def passthrough(grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return list(grads)

    passthrough.is_identity = True  # type: ignore[attr-defined]
    return passthrough


def is_identity(transform: Transform | None) -> bool:
    """Whether ``transform`` is :func:`identity`'s pass-through (or absent)."""
    return transform is None or bool(getattr(transform, "is_identity", False))


def straight_through(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """Forward ``value``, backward the gradient of ``surrogate`` (here: the identity)."""
    return surrogate + (value - surrogate).detach()


def scale_to_norm(grads: list[torch.Tensor], clip_norm: float) -> list[torch.Tensor]:
    """Scale all tensors jointly by min(1, C / ||g||) (differentiable)."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    factor = torch.clamp(clip_norm / norm.clamp_min(1e-12), max=1.0)
    return [g * factor for g in grads]


register_surrogate("none")(identity)
