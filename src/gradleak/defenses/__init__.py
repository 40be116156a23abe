"""Defense registry: post-processing applied by the client to its shared update (Sec. 6).

A defense is a callable ``defense(update, *, generator) -> SharedUpdate``, pure apart from the
seeded ``generator``, so any FL code can use it on its own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gradleak.config import DefenseConfig
from gradleak.fl.client import SharedUpdate
from gradleak.registry import Registry

Defense = Callable[..., SharedUpdate]
DEFENSES: Registry = Registry("defense")


def register_defense(name: str):
    return DEFENSES.register(name)


@register_defense("none")
def no_defense(update: SharedUpdate, *, generator: torch.Generator | None = None) -> SharedUpdate:
    """Share the update as it is."""
    return update


def build_defense(cfg: DefenseConfig) -> Defense:
    return DEFENSES.get(cfg.name)
