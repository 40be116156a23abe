"""A GIA-L check: was the attack's generator trained on the victim's own split?"""

from __future__ import annotations

from typing import Any

import torch

from gradleak.attack_settings import settings_for


def generator_overlap(cfg: Any) -> list[str]:
    """A warning when a GIA-L attack's generator was trained on the very split the victim's
    samples are drawn from (its checkpoint records its training data): the generator may then
    have seen the victim, which makes the attack look stronger than a real adversary's."""
    path = getattr(cfg.attack, "generator", None)
    if not path or "generator" not in settings_for(cfg.attack.name).names():
        return []
    try:
        trained_on = torch.load(path, map_location="cpu", weights_only=True).get("data") or {}
    except Exception:  # the attack itself reports unreadable files in one line
        return []
    same = all(trained_on.get(k) == getattr(cfg.data, k) for k in ("dataset", "split", "root"))
    if not same:
        return []
    return [f"the generator {path!r} was trained on data.dataset={cfg.data.dataset!r} "
            f"split={cfg.data.split!r}, the split the victim's samples come from: it may have seen "
            "them, so the GIA-L result is optimistic; take victims from another split "
            "(e.g. data.split=test) or train the generator on disjoint data"]
