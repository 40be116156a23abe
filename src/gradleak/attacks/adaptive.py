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
none       identity
=========  ===========================================================================

The transform maps the list of dummy gradient tensors of the matched parameters (the order the
engine uses, ``[tensor of shape p_i.shape, ...]``) to their defended version. A model delta and
its negation (the gradient direction) get the same mask and sign-symmetric treatment, so it
applies in both the BST and WST modes; clip's bound is in the units of the observed update, so
it is exact for FedSGD and the simulated (WST) FedAvg delta and approximate for BST.

Defaults were chosen by measurement (MLP 768-32-10, 16 px, one photo, 600 iterations, seeds
0-2, PSNR in dB): topk 0.9 mask 14.2/13.2/15.2, threshold 20.5/21.4/22.6, non-adaptive
23.7/20.1/20.1; clip 0.01 clamp 11.4/10.3/9.7, straight-through 11.7/10.4/10.9, non-adaptive
12.5/11.5/13.7. The plain mask and clamp are valid but relax the constraint; an adaptive attack
is not automatically stronger.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from gradleak.config import DefenseConfig
from gradleak.errors import GradleakError
from gradleak.fl.client import SharedUpdate

Transform = Callable[[list[torch.Tensor]], list[torch.Tensor]]
SURROGATES = ("none", "clip", "clip_norm", "topk", "signsgd", "qsgd", "gaussian")


def straight_through(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """Forward ``value``, backward the gradient of ``surrogate`` (here: the identity)."""
    return surrogate + (value - surrogate).detach()


def _scale(grads: list[torch.Tensor], clip_norm: float) -> list[torch.Tensor]:
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    factor = torch.clamp(clip_norm / norm.clamp_min(1e-12), max=1.0)
    return [g * factor for g in grads]


def _kept_minimum(observed: list[torch.Tensor], per_tensor: bool) -> list[float]:
    """tau: the smallest non-zero magnitude per tensor (or over all tensors); inf if none kept."""
    mins = [float(t[t != 0].abs().min()) if bool((t != 0).any()) else float("inf") for t in observed]
    return mins if per_tensor else [min(mins, default=float("inf"))] * len(observed)


def _own_topk_masks(grads: list[torch.Tensor], sparsity: float, per_tensor: bool) -> list[torch.Tensor]:
    """The defense's own top-k masks of the (detached) dummy gradient."""
    from gradleak.defenses.topk import keep_largest

    if per_tensor:
        return [keep_largest(g.detach().reshape(-1).abs() + 1e-30, sparsity).reshape(g.shape) != 0
                for g in grads]
    flat = torch.cat([g.detach().reshape(-1).abs() + 1e-30 for g in grads])
    kept = keep_largest(flat, sparsity) != 0
    return [m.reshape(g.shape) for m, g in zip(kept.split([g.numel() for g in grads]), grads,
                                               strict=True)]


def _signs(grads: list[torch.Tensor], scale_sign: bool, per_tensor: bool,
           surrogate: str) -> list[torch.Tensor]:
    if per_tensor:
        scales = [g.abs().mean() for g in grads]
    else:
        whole = torch.cat([g.reshape(-1) for g in grads]).abs().mean()
        scales = [whole] * len(grads)
    out = []
    for g, s in zip(grads, scales, strict=True):
        if surrogate == "tanh":
            soft = torch.tanh(g / (0.1 * g.detach().abs().mean()).clamp_min(1e-12))
            out.append(soft * s if scale_sign else soft)
        else:
            hard = torch.sign(g) * s if scale_sign else torch.sign(g)
            out.append(straight_through(hard, g * s if scale_sign else g))
    return out


def build_transform(name: str, params: dict[str, Any] | None = None,
                    observed: Sequence[torch.Tensor] | None = None, *, sign_surrogate: str = "ste",
                    clip_surrogate: str = "ste", topk_surrogate: str = "threshold") -> Transform:
    """The differentiable surrogate of defense ``name`` with its ``params`` (named after
    :class:`DefenseConfig` fields, e.g. ``{"bound": 0.1}``); ``observed``: the defended update's
    tensors in the same order as the dummy list (needed for topk's mask)."""
    p = dict(params or {})
    for label, value, allowed in (("sign", sign_surrogate, ("ste", "tanh")),
                                  ("clip", clip_surrogate, ("ste", "clamp")),
                                  ("topk", topk_surrogate, ("threshold", "mask"))):
        if value not in allowed:
            raise GradleakError(f"bad {label} surrogate {value!r}; allowed: {', '.join(allowed)}")
    per_tensor = bool(p.get("per_tensor", True))
    if name in ("none", "qsgd"):
        return lambda grads: list(grads)
    if name == "gaussian":
        c = p.get("clip_norm")
        return (lambda grads: _scale(list(grads), c)) if c is not None else (lambda grads: list(grads))
    if name == "clip":
        bound = float(p.get("bound", 0.1))
        if clip_surrogate == "clamp":
            return lambda grads: [g.clamp(-bound, bound) for g in grads]
        return lambda grads: [straight_through(g.clamp(-bound, bound), g) for g in grads]
    if name == "clip_norm":
        c = p.get("clip_norm")
        if c is None or not c > 0:
            raise GradleakError(f"bad value {c!r} for defense.clip_norm: must be a number > 0")
        return lambda grads: _scale(list(grads), float(c))
    if name == "topk":
        if observed is not None:
            masks = [t != 0 for t in observed]
            taus = _kept_minimum(list(observed), per_tensor)

            def masked(grads: list[torch.Tensor]) -> list[torch.Tensor]:
                if len(grads) != len(masks):
                    raise GradleakError(f"adaptive topk: {len(grads)} dummy tensors but "
                                        f"{len(masks)} observed ones")
                out = []
                for g, m, tau in zip(grads, masks, taus, strict=True):
                    m = m.to(g.device)
                    dropped = (g - g.clamp(-tau, tau) if topk_surrogate == "threshold"
                               else torch.zeros_like(g))
                    out.append(torch.where(m, g, dropped))
                return out

            return masked
        sparsity = float(p.get("sparsity", 0.9))
        return lambda grads: [g * m.to(g.dtype) for g, m in
                              zip(grads, _own_topk_masks(list(grads), sparsity, per_tensor),
                                  strict=True)]
    if name == "signsgd":
        scale_sign = bool(p.get("scale_sign", False))
        return lambda grads: _signs(list(grads), scale_sign, per_tensor, sign_surrogate)
    raise GradleakError(f"attack.adaptive has no surrogate for defense {name!r}; known: "
                        f"{', '.join(SURROGATES)}")


def transform_for(defense: DefenseConfig, update: SharedUpdate | None = None,
                  names: Sequence[str] | None = None, *, sign_surrogate: str = "ste") -> Transform:
    """:func:`build_transform` from a :class:`DefenseConfig`; ``names`` picks (and orders) the
    observed ``update`` tensors the dummy list corresponds to (default: all, in update order)."""
    params = {k: getattr(defense, k) for k in ("bound", "clip_norm", "sparsity", "scale_sign",
                                                 "per_tensor", "bits", "levels", "noise_multiplier")}
    observed = None
    if update is not None:
        keys = list(names) if names is not None else list(update.tensors)
        observed = [update.tensors[k] for k in keys]
    return build_transform(defense.name, params, observed, sign_surrogate=sign_surrogate)
