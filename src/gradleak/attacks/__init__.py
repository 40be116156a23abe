"""Attack registry: ``build_attack(cfg)`` returns a callable :class:`Attack`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gradleak.attack_settings import AttackSettings, register_settings
from gradleak.attacks.base import Attack, AttackInfo, Observation, Reconstruction, observe
from gradleak.errors import GradleakError
from gradleak.registry import Registry

ATTACKS: Registry = Registry("attack")
A = TypeVar("A", bound=type[Attack])


def register_attack(name: str, *, settings: type[AttackSettings] | None = None,
                    preset: str | Path | None = None) -> Callable[[A], A]:
    """Class decorator registering an attack under ``name``. ``settings``: its typed ``attack.*``
    keys (default: the class's ``settings``; a dataclass subclassing
    :class:`~gradleak.attack_settings.AttackSettings`); ``preset``: a YAML file of defaults for
    them, like ``configs/attacks/<name>.yaml``."""

    def decorate(cls: A) -> A:
        if name in ATTACKS:
            raise GradleakError(f"attack {name!r} is already registered")
        if settings is not None:
            cls.settings = settings
        register_settings(name, cls.settings, preset)
        return ATTACKS.register(name)(cls)

    return decorate


def build_attack(cfg: AttackSettings) -> Attack:
    """Build the attack named by ``cfg.name`` from the ``attack`` config section."""
    cls = ATTACKS.get(cfg.name)
    group = getattr(cfg, "group", 1)
    if group > 1 and "group" not in cls.settings.names():
        raise GradleakError(f"attack.group={group}: group consistency applies to the "
                            f"observable-space attacks (dlg, idlg, ig, gradinversion, rog), not {cfg.name}")
    return cls.from_config(cfg)


from gradleak.attacks import (  # noqa: E402,F401
    analytic,
    dager,
    dlg,
    ggl,
    gias,
    gradinversion,
    inverting_gradients,
    lamp,
    mix_decode,
    precode_analytic,
    rog,
    tag,
    token_set,
)

__all__ = ["ATTACKS", "Attack", "AttackInfo", "Observation", "Reconstruction", "build_attack",
           "observe", "register_attack"]
