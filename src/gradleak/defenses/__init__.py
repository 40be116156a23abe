"""Defense registry: post-processing applied by the client to its shared update (Sec. 6).

A defense is a function ``defense(update, *, generator=None, **params) -> SharedUpdate``, pure
apart from the seeded ``generator``, so any FL code can use it on its own. Its keyword-only
``params`` are named after :class:`DefenseConfig` fields; ``build_defense(cfg)`` binds them.
Defenses transform ``update.tensors`` only and never modify their input; ``kind``,
``num_samples`` are passed through. Only floating-point tensors are transformed: integer or
boolean tensors (a framework's ``num_batches_tracked`` counter in a ``state_dict`` delta) are
passed through unchanged and take no part in norms or top-k counts.

A *training-time* defense (Soteria, Outpost) needs the client's round, not only its update: it
registers with ``context=True`` and is called by :func:`apply_defense` with ``model=`` (the
global model the client received), ``inputs=`` (the client's samples ``[N, C, H, W]``) and
``round_=`` (the 1-based FL round); ``Scenario.defend`` and the FL clients pass them. Called
without them (a Flower mod, which sees only the update), it refuses in one line.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch

from gradleak.config import DefenseConfig
from gradleak.errors import GradleakError
from gradleak.registry import Registry
from gradleak.update import SharedUpdate

Defense = Callable[..., SharedUpdate]
DEFENSES: Registry = Registry("defense")


def register_defense(name: str, *, context: bool = False,
                     describe: Callable[..., dict[str, Any]] | None = None):
    """Register a defense; ``context=True``: it reads the client's round (see the module
    docstring); ``describe(model, **params) -> dict``: what it records about its setting."""

    def decorate(fn: Defense) -> Defense:
        fn.needs_context = context  # type: ignore[attr-defined]
        if describe is not None:
            fn.describe = describe  # type: ignore[attr-defined]
        return DEFENSES.register(name)(fn)

    return decorate


def needs_context(defense: Defense) -> bool:
    """Whether ``defense`` (registered, or built by :func:`build_defense`) reads the round."""
    return bool(getattr(defense, "needs_context", False))


def apply_defense(defense: Defense, update: SharedUpdate, *, generator: torch.Generator | None,
                  model: torch.nn.Module | None = None, inputs: torch.Tensor | None = None,
                  round_: int = 1) -> SharedUpdate:
    """``defense(update)``; a training-time defense also gets the client's round context."""
    if needs_context(defense):
        return defense(update, generator=generator, model=model, inputs=inputs, round_=round_)
    return defense(update, generator=generator)


def defense_details(defense: Defense, model: torch.nn.Module) -> dict[str, Any]:
    """What ``defense`` records about its setting on ``model`` (e.g. Soteria's layer); {} if
    nothing."""
    describe = getattr(defense, "describe", None)
    return {} if describe is None else describe(model, **getattr(defense, "keywords", {}))


def training_time_error(name: str) -> GradleakError:
    """The one line for a training-time defense called without the client's round."""
    return GradleakError(f"defense {name!r} is a training-time defense: it needs the client's "
                         "model and inputs (gradleak's clients pass them), which a "
                         "post-processing step such as a Flower mod does not have")


def check_param(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise the one-line error for a bad ``defense.<key>`` unless ``ok``."""
    if not ok:
        raise GradleakError(f"bad value {value!r} for defense.{key}: must be {allowed}")


def is_float(t: torch.Tensor) -> bool:
    """Whether a defense transforms ``t``: floating-point (or complex) tensors only."""
    return t.is_floating_point() or t.is_complex()


def float_tensors(update: SharedUpdate) -> dict[str, torch.Tensor]:
    """The tensors of ``update`` a defense transforms, in ``update.tensors`` order."""
    return {n: t for n, t in update.tensors.items() if is_float(t)}


def map_float(update: SharedUpdate, fn: Callable[[torch.Tensor], torch.Tensor]) -> SharedUpdate:
    """``fn`` applied to every floating-point tensor; other tensors pass through unchanged."""
    return update.replace({n: fn(t) if is_float(t) else t for n, t in update.tensors.items()})


def map_tensors(update: SharedUpdate, fn: Callable[[torch.Tensor], torch.Tensor], *,
                per_tensor: bool = True) -> SharedUpdate:
    """Apply ``fn`` (flat 1-D tensor -> new flat tensor of the same length) to each floating-point
    tensor, or, with ``per_tensor=False``, once to all of them concatenated in ``update.tensors``
    order. Non-float tensors are passed through unchanged."""
    if per_tensor:
        return map_float(update, lambda t: fn(t.reshape(-1)).reshape(t.shape))
    floats = float_tensors(update)
    if not floats:
        return update.replace(dict(update.tensors))
    names = list(floats)
    flat = torch.cat([floats[n].reshape(-1) for n in names])
    pieces = fn(flat).split([floats[n].numel() for n in names])
    out = {n: p.reshape(floats[n].shape) for n, p in zip(names, pieces, strict=True)}
    return update.replace({n: out.get(n, t) for n, t in update.tensors.items()})


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


_CONTEXT = ("generator", "model", "inputs", "round_")


def build_defense(cfg: DefenseConfig) -> Defense:
    """The defense ``cfg.name`` with its parameters bound from the same-named ``cfg`` fields."""
    fn = DEFENSES.get(cfg.name)
    params = {name: getattr(cfg, name) for name, p in inspect.signature(fn).parameters.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in _CONTEXT
              and hasattr(cfg, name)}
    return functools.update_wrapper(functools.partial(fn, **params), fn)


# Importing the modules registers their defenses.
from gradleak.defenses import (  # noqa: E402,F401
    clip,
    clip_norm,
    dpsgd,
    gaussian,
    outpost,
    qsgd,
    signsgd,
    soteria,
    topk,
)

__all__ = ["DEFENSES", "Defense", "apply_defense", "build_defense", "check_param",
           "defense_details", "float_tensors", "is_float", "map_float", "map_tensors",
           "needs_context", "random_like", "register_defense", "training_time_error"]
