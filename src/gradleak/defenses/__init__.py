"""Defense registry: post-processing applied by the client to its shared update (Sec. 6).

A defense is a function ``defense(update, *, generator=None, **params) -> SharedUpdate``, pure
apart from the seeded ``generator``, so any FL code can use it on its own. Its keyword-only
``params`` are named after :class:`DefenseConfig` fields; ``build_defense(cfg)`` binds them.
Defenses transform ``update.tensors`` only and never modify their input; ``kind``,
``num_samples`` are passed through.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch

from gradleak.config import DefenseConfig
from gradleak.errors import GradleakError
from gradleak.fl.client import SharedUpdate
from gradleak.registry import Registry

Defense = Callable[..., SharedUpdate]
DEFENSES: Registry = Registry("defense")


def register_defense(name: str):
    return DEFENSES.register(name)


def check_param(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise the one-line error for a bad ``defense.<key>`` unless ``ok``."""
    if not ok:
        raise GradleakError(f"bad value {value!r} for defense.{key}: must be {allowed}")


def map_tensors(update: SharedUpdate, fn: Callable[[torch.Tensor], torch.Tensor], *,
                per_tensor: bool = True) -> SharedUpdate:
    """Apply ``fn`` (flat 1-D tensor -> new flat tensor of the same length) to each tensor, or,
    with ``per_tensor=False``, once to all tensors concatenated in ``update.tensors`` order."""
    names = list(update.tensors)
    if per_tensor:
        out = {n: fn(update.tensors[n].reshape(-1)).reshape(update.tensors[n].shape) for n in names}
        return update.replace(out)
    if not names:
        return update.replace({})
    flat = torch.cat([update.tensors[n].reshape(-1) for n in names])
    pieces = fn(flat).split([update.tensors[n].numel() for n in names])
    return update.replace({n: p.reshape(update.tensors[n].shape) for n, p in zip(names, pieces,
                                                                                 strict=True)})


def random_like(t: torch.Tensor, generator: torch.Generator | None, kind: str) -> torch.Tensor:
    """``torch.rand`` (``kind="uniform"``) or ``torch.randn`` draws shaped like ``t``, taken from
    ``generator`` on its own device so the same seed gives the same draws on any ``t.device``."""
    draw = torch.rand if kind == "uniform" else torch.randn
    device = generator.device if generator is not None else t.device
    return draw(t.shape, generator=generator, device=device, dtype=t.dtype).to(t.device)


@register_defense("none")
def no_defense(update: SharedUpdate, *, generator: torch.Generator | None = None) -> SharedUpdate:
    """Share the update as it is."""
    return update


def build_defense(cfg: DefenseConfig) -> Defense:
    """The defense ``cfg.name`` with its parameters bound from the same-named ``cfg`` fields."""
    fn = DEFENSES.get(cfg.name)
    params = {name: getattr(cfg, name) for name, p in inspect.signature(fn).parameters.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "generator"
              and hasattr(cfg, name)}
    return functools.update_wrapper(functools.partial(fn, **params), fn)


# Importing the modules registers their defenses.
from gradleak.defenses import clip, clip_norm, gaussian, qsgd, signsgd, topk  # noqa: E402,F401

__all__ = ["DEFENSES", "Defense", "build_defense", "check_param", "map_tensors", "random_like",
           "register_defense"]
