"""Grids of defense settings: the paper's strengths per defense (App. C iii) and the points
of a privacy-utility sweep or an audit's defense search. Pure data; no torch."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gradleak.config import Config, set_key
from gradleak.errors import GradleakError

__all__ = ["DEFAULT_DEFENSES", "PAPER_GRIDS", "GridPoint", "build_grid", "point_config"]

# defense -> (DefenseConfig field varied, paper grid for ResNet-18, App. C iii).
PAPER_GRIDS: dict[str, tuple[str | None, list[Any]]] = {
    "none": (None, [None]),
    "qsgd": ("bits", [1, 2, 3, 4]),
    "signsgd": (None, [None]),
    "topk": ("sparsity", [0.6, 0.7, 0.8, 0.9, 0.95]),
    "clip": ("bound", [0.5, 0.3, 0.1, 0.05, 0.01]),
    "gaussian": ("noise_multiplier", [0.05, 0.1, 0.15, 0.2, 0.25]),
    "clip_norm": ("clip_norm", [10.0, 5.0, 1.0, 0.5, 0.1]),  # not in the paper's grid
    "dpsgd": ("dp_noise_multiplier", [0.1, 0.5, 1.0, 2.0]),  # not in the paper's grid
    "soteria": ("soteria_rate", [0.2, 0.4, 0.6, 0.8]),  # not in the paper's; 0.6 is Soteria's own
    "outpost": ("outpost_noise", [0.2, 0.4, 0.8, 1.6]),  # not in the paper's; 0.8 is Plato's
}
DEFAULT_DEFENSES = ("qsgd", "signsgd", "topk", "clip", "gaussian")


@dataclass
class GridPoint:
    """One defense setting: ``defense.<param> = value`` (``param`` None for settings-free ones)."""

    defense: str
    param: str | None = None
    value: Any = None

    @property
    def key(self) -> str:
        return self.defense if self.param is None else f"{self.defense}-{self.param}={self.value}"


def build_grid(defenses: Sequence[str] = DEFAULT_DEFENSES,
               overrides: dict[str, list[Any]] | None = None) -> list[GridPoint]:
    """``none`` first, then every listed defense over its paper grid (or ``overrides[name]``)."""
    overrides = overrides or {}
    unknown = [d for d in [*defenses, *overrides] if d not in PAPER_GRIDS]
    if unknown:
        raise GradleakError(f"unknown defense {unknown[0]!r} for privacy-utility; allowed: "
                            f"{', '.join(PAPER_GRIDS)}")
    stray = [d for d in overrides if d not in defenses and d != "none"]
    if stray:
        raise GradleakError(f"--grid names {stray[0]!r}, which is not in --defenses")
    points = [GridPoint("none")]
    for name in dict.fromkeys(defenses):
        if name == "none":
            continue
        param, values = PAPER_GRIDS[name]
        if name in overrides:
            if param is None:
                raise GradleakError(f"defense {name!r} has no strength to grid over")
            values = overrides[name]
        points += [GridPoint(name, param, v) for v in values]
    return points


def point_config(cfg: Config, point: GridPoint) -> Config:
    """A copy of ``cfg`` with ``defense.name`` (and the point's strength) set, validated."""
    out = copy.deepcopy(cfg)
    set_key(out, "defense.name", point.defense)
    if point.param is not None:
        set_key(out, f"defense.{point.param}", point.value)
    return out
