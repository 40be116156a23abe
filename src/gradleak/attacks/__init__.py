"""Attack registry: ``build_attack(cfg)`` returns a callable :class:`Attack`."""

from __future__ import annotations

from gradleak.attacks.base import Attack, AttackInfo, Observation, Reconstruction, observe
from gradleak.config import AttackConfig
from gradleak.registry import Registry

ATTACKS: Registry = Registry("attack")


def register_attack(name: str):
    return ATTACKS.register(name)


def build_attack(cfg: AttackConfig) -> Attack:
    """Build the attack named by ``cfg.name`` from its config section."""
    return ATTACKS.get(cfg.name).from_config(cfg)


from gradleak.attacks import analytic, dlg, ggl, gias, gradinversion, inverting_gradients, rog  # noqa: E402,F401

__all__ = ["ATTACKS", "Attack", "AttackInfo", "Observation", "Reconstruction", "build_attack",
           "observe", "register_attack"]
