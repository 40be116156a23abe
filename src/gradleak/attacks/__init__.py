"""Attack registry: ``build_attack(cfg)`` returns a callable :class:`Attack`."""

from __future__ import annotations

from gradleak.attacks.base import Attack, AttackInfo, Observation, Reconstruction, observe
from gradleak.config import AttackConfig
from gradleak.errors import GradleakError
from gradleak.registry import Registry

ATTACKS: Registry = Registry("attack")


def register_attack(name: str):
    return ATTACKS.register(name)


def build_attack(cfg: AttackConfig) -> Attack:
    """Build the attack named by ``cfg.name`` from its config section."""
    attack = ATTACKS.get(cfg.name).from_config(cfg)
    if cfg.group > 1 and getattr(attack, "group", 1) != cfg.group:
        raise GradleakError(f"attack.group={cfg.group}: group consistency applies to the "
                            f"observable-space attacks (dlg, idlg, ig, gradinversion, rog), not {cfg.name}")
    return attack


from gradleak.attacks import analytic, dlg, ggl, gias, gradinversion, inverting_gradients, rog  # noqa: E402,F401

__all__ = ["ATTACKS", "Attack", "AttackInfo", "Observation", "Reconstruction", "build_attack",
           "observe", "register_attack"]
