"""Model and training switches the recommendation searches beside the post-processing defenses.

PRECODE (Scheliga et al., WACV 2022) is a model change (``model.precode``) and MixUp/InstaHide
(GradAttack, Huang et al., NeurIPS 2021) a change of the client's training (``client.mix``):
neither post-processes the update, so neither is a ``defense.name``. Each is judged against the
published attack that breaks it, run as the setting's adaptive attacker (once, on the first
leaking level that runs IG; the mixing attack also knows the labels, as GradAttack's does):

=========  ===================================  ==================================================
switch     setting (grid value)                 breaking attack
=========  ===================================  ==================================================
precode    ``model.precode_beta`` (KL weight)   ``precode-analytic`` (Balunović et al., ICLR 2022)
mixup      ``client.mix_k`` (2, 4 mixed)        ``mix-decode`` with ``threat.knows_mixing``
instahide  ``client.mix_k`` (2, 4)              ``mix-decode`` with ``threat.knows_mixing``
=========  ===================================  ==================================================

Where a switch cannot apply it is left out of the search, with the reason in
``recommendation.skipped``: PRECODE on text or user models (it rebuilds gradleak's own models);
MixUp/InstaHide on text, under FedAvg (``mix-decode`` inverts one FedSGD gradient, so no
adaptive attacker would judge it) and with fewer victim samples than samples mixed.
"""

from __future__ import annotations

from typing import Any

from gradleak.defenses.grid import GridPoint

PRECODE, MIXUP, INSTAHIDE = "precode", "mixup", "instahide"
# MixUp/InstaHide: GradAttack's k 4, and k 2 for a victim with 2-3 samples (weakest first).
SWITCHES = {PRECODE: ("beta", [1e-3]), MIXUP: ("k", [2, 4]), INSTAHIDE: ("k", [2, 4])}
# GradAttack's attacker on mixing is an upper bound: it knows the partners, the coefficients and
# the labels, whatever the level grants.
_MIX_BREAKER = {"attack.name": "mix-decode", "threat.knows_mixing": True,
                "threat.knows_labels": True, "attack.labels": "known"}
BREAKERS = {PRECODE: {"attack.name": "precode-analytic"}, MIXUP: _MIX_BREAKER,
            INSTAHIDE: _MIX_BREAKER}


def is_switch(defense: str) -> bool:
    return defense in SWITCHES


def switch_points(names: list[str], grids: dict[str, list[Any]], setup: Any
                  ) -> tuple[list[GridPoint], dict[str, str]]:
    """The grid points of the switches in ``names`` (values from ``grids`` or the published
    default), and ``{switch: why}`` for those that cannot apply to ``setup``."""
    points, skipped = [], {}
    for name in (n for n in names if n in SWITCHES):
        why = _not_applicable(name, setup)
        if why is not None:
            skipped[name] = why
            continue
        param, values = SWITCHES[name]
        values = list(grids.get(name, values))
        if name != PRECODE:  # k distinct samples of the victim's own
            n, fewest = setup.num_samples, min((int(v) for v in values), default=0)
            values = [v for v in values if int(v) <= n]
            if not values:
                skipped[name] = (f"the victim holds {n} sample{'' if n == 1 else 's'}, fewer "
                                 f"than client.mix_k (at least {fewest})")
                continue
        points += [GridPoint(name, param, v) for v in values]
    return points, skipped


def _not_applicable(name: str, setup: Any) -> str | None:
    if setup.text:
        return "a text model"
    if name == PRECODE:
        from gradleak.models import MODELS

        model = setup.cfg.model.name
        return None if model in MODELS.names() else f"PRECODE rebuilds gradleak's own models, not {model}"
    if setup.fedavg:
        return "FedAvg: the attack that breaks it (mix-decode) inverts one FedSGD gradient"
    return None


def switch_keys(point: GridPoint) -> dict[str, Any]:
    """The config keys of a switch setting (undefended otherwise)."""
    if point.defense == PRECODE:
        return {"defense.name": "none", "model.precode": True, "model.precode_beta": point.value}
    return {"defense.name": "none", "client.mix": point.defense, "client.mix_k": point.value}


def breaker_keys(defense: str) -> dict[str, Any]:
    """What turns a level's attack into the switch's breaking attack."""
    return dict(BREAKERS[defense])
