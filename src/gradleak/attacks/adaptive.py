"""The adaptive attacker: apply the client's known post-processing to the dummy gradients too.

A non-adaptive attack matches its clean dummy gradient against the defended update it observes.
An adaptive one (as GGL's "adaptive" mode, Li et al. CVPR 2022) knows the defense (Sec. 6 /
App. C iii) and post-processes its dummy gradient the same way before the distance, using a
differentiable version or a surrogate:

=========  ===========================================================================
clip       forward clamp to [-bound, bound]; backward identity (``clip_surrogate="ste"``) or
           the clamp's own a.e. gradient (``"clamp"``, zero on every clipped entry)
clip_norm  scale by min(1, C / ||g||) over all matched tensors (differentiable)
topk       the observed update's non-zero mask (the attacker sees which entries survived): kept
           entries pass, and with ``topk_surrogate="threshold"`` (default) a dropped entry passes
           only its excess over tau = the smallest kept magnitude (per tensor, or over the whole
           update), since top-k also reveals that dropped entries are no larger than tau;
           ``"mask"`` zeroes dropped entries. Without an observed update: the dummy's own mask
signsgd    straight-through: forward sign(g) (times mean |g| with ``scale_sign``), backward
           identity; or ``sign_surrogate="tanh"``: tanh(g / (0.1 * mean |g|))
qsgd       identity: QSGD is unbiased, E[Q(g)] = g, so the expectation passes straight through
gaussian   identity (fresh noise cannot be simulated; with ``clip_norm``, clip_norm's scaling)
soteria    the pruned representation-layer weight is not matched (Balunović et al., ICLR 2022:
           match every layer but the defended one); the other tensors: identity
none       identity
=========  ===========================================================================

Each surrogate is registered beside its defense (:mod:`gradleak.defenses.surrogate`,
``@register_surrogate``), so a plug-in defense can bring its own. The transform maps the list of
dummy gradient tensors of the matched parameters (the order the engine uses, ``[tensor of shape
p_i.shape, ...]``) to their defended version. A model delta and its negation (the gradient
direction) get the same mask and sign-symmetric treatment, so it applies in both the BST and WST
modes; clip's bound is in the units of the observed update, so it is exact for FedSGD and the
simulated (WST) FedAvg delta and approximate for BST. Defaults were chosen by measurement (MLP
768-32-10, 16 px, one photo, 600 iterations, seeds 0-2, PSNR in dB): topk 0.9 mask 14.2/13.2/15.2,
threshold 20.5/21.4/22.6, non-adaptive 23.7/20.1/20.1; clip 0.01 clamp 11.4/10.3/9.7, straight-
through 11.7/10.4/10.9, non-adaptive 12.5/11.5/13.7. The plain mask and clamp are valid but relax
the constraint; an adaptive attack is not automatically stronger.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from gradleak.config import DefenseConfig
from gradleak.defenses.surrogate import (
    SURROGATES,
    SurrogateOptions,
    Transform,
    excluded_names,
    straight_through,
)
from gradleak.errors import GradleakError
from gradleak.update import SharedUpdate

__all__ = ["Transform", "build_transform", "excluded_for", "straight_through", "transform_for"]


def build_transform(name: str, params: dict[str, Any] | None = None,
                    observed: Sequence[torch.Tensor] | None = None, *, sign_surrogate: str = "ste",
                    clip_surrogate: str = "ste", topk_surrogate: str = "threshold") -> Transform:
    """The differentiable surrogate of defense ``name`` with its ``params`` (named after
    :class:`DefenseConfig` fields, e.g. ``{"bound": 0.1}``); ``observed``: the defended update's
    tensors in the same order as the dummy list (needed for topk's mask)."""
    options = SurrogateOptions(sign=sign_surrogate, clip=clip_surrogate, topk=topk_surrogate)
    if name not in SURROGATES:
        raise GradleakError(f"attack.adaptive has no surrogate for defense {name!r}; known: "
                            f"{', '.join(SURROGATES.names())}")
    return SURROGATES.get(name)(dict(params or {}), observed, options)


def transform_for(defense: DefenseConfig, update: SharedUpdate | None = None,
                  names: Sequence[str] | None = None, *, sign_surrogate: str = "ste") -> Transform:
    """:func:`build_transform` from a :class:`DefenseConfig`; ``names`` picks (and orders) the
    observed ``update`` tensors the dummy list corresponds to (default: all, in update order)."""
    observed = None
    if update is not None:
        keys = list(names) if names is not None else list(update.tensors)
        observed = [update.tensors[k] for k in keys]
    return build_transform(defense.name, _params(defense), observed, sign_surrogate=sign_surrogate)


def _params(defense: DefenseConfig) -> dict[str, Any]:
    return {f.name: getattr(defense, f.name) for f in dataclasses.fields(defense) if f.name != "name"}


def excluded_for(defense: DefenseConfig, model: nn.Module) -> frozenset[str]:
    """The parameter names the adaptive attacker leaves out of the matching against
    ``defense`` on ``model`` (Soteria: its pruned layer); empty for most defenses."""
    return excluded_names(defense.name, _params(defense), model)
