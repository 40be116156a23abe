"""The recommendation when a setup leaks: the cheapest post-processing that stops the strongest
attack of the ladder, and the most vulnerable layers (paper Sec. 7: defend the vulnerable parts
lightly).

* Privacy of a defense setting: the strongest leaking level's config with the defense, over the
  same seeds (kind ``defended_attack``), adaptive (``attack.adaptive=true``) where the defense
  has a differentiable surrogate and the attack an adaptive mode; the level's verdict rule.
  Each defense's grid (weakest to strongest) is bisected for its weakest setting that does not
  leak (:class:`Bisection`), a sweep per round: at most ``ceil(log2(len + 1))`` settings per
  defense instead of all of them, since a stronger setting only costs more.
* Utility cost: the drop of test accuracy (percentage points) after a short FL training of the
  user's model on the user's data with the defense, against the same training without it (kind
  ``privacy_utility`` with ``attack: false``; the held-out test split of ``data.test_root`` /
  ``test/``, or the held-out part of the data); with ``--no-train`` the update's relative
  distortion ``||D(u) - u|| / ||u||`` (mean over seeds) instead.
* :func:`pick_defense`: the least costly setting whose verdict is ``does not leak`` within the
  accuracy budget; when none qualifies, the best available (lowest at-risk share) is shown.
* Layers: the ``recommend.layers`` largest parameterised layers attacked one at a time
  (``attack.layers=[name]``); a layer whose gradient alone leaks suffices for the attack.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gradleak.audit.ladder import Ladder, Level, Setup, level_config
from gradleak.audit.scenarios import run_spec
from gradleak.audit.verdict import LEAKS, SAFE, RunEvidence, VerdictRule, level_verdict
from gradleak.config import flatten
from gradleak.experiments.privacy_utility import GridPoint, build_grid
from gradleak.experiments.spec import RunSpec

EXPERIMENT = "audit-recommend"

COST_ACCURACY, COST_DISTORTION = "accuracy_drop", "distortion"
PER_LAYER_NOTE = ("not measured: gradleak's defenses post-process the whole update (there is no "
                  "key to defend only some layers), so defending just these layers cannot be "
                  "run; defend the whole update with the recommended setting")


def adaptive_for(attack_name: str, defense: str) -> bool:
    """Whether the attack can adapt to ``defense``: the defense registered a differentiable
    surrogate and the attack overrides :meth:`~gradleak.attacks.base.Attack.adapt`."""
    from gradleak.attacks import ATTACKS
    from gradleak.attacks.base import Attack
    from gradleak.defenses.surrogate import SURROGATES

    if defense == "none" or defense not in SURROGATES.names():
        return False
    return ATTACKS.get(attack_name).adapt is not Attack.adapt


def pick_defense(points: list[dict[str, Any]], *, max_drop: float | None,
                 cost: str = COST_ACCURACY) -> dict[str, Any]:
    """The recommendation from evaluated defense settings.

    ``points``: ``{key, defense, param, value, verdict, at_risk_share, cost}`` (``cost``: accuracy
    drop in points, or the relative distortion; None when unknown). Returns ``{status, choice,
    best_available, reason}``: ``status`` is ``recommended`` (the cheapest ``does not leak``
    setting within ``max_drop``, which applies to accuracy costs only; ties: the order given)
    or ``none qualifies`` (then ``best_available`` is the setting with the lowest at-risk share,
    then the lowest cost)."""

    def cost_of(p: dict[str, Any]) -> float:
        return p["cost"] if isinstance(p.get("cost"), (int, float)) else math.inf

    safe = [p for p in points if p.get("verdict") == SAFE and p.get("cost") is not None]
    within = [p for p in safe if cost != COST_ACCURACY or max_drop is None
              or cost_of(p) <= max_drop]
    if within:
        choice = min(within, key=cost_of)  # min keeps the first of equal costs
        unit = "points of accuracy" if cost == COST_ACCURACY else "relative distortion"
        return {"status": "recommended", "choice": choice, "best_available": choice,
                "reason": f"{choice['key']}: does not leak at a cost of {cost_of(choice):.3g} "
                          f"{unit}, the cheapest such setting"}
    ranked = sorted(points, key=lambda p: (p["at_risk_share"] if p.get("at_risk_share")
                                           is not None else math.inf, cost_of(p)))
    best = ranked[0] if ranked else None
    if safe:
        why = (f"the settings that do not leak cost more than {max_drop:g} points of accuracy "
               f"(cheapest: {min(safe, key=cost_of)['key']}, {cost_of(min(safe, key=cost_of)):.3g})")
    else:
        why = "no evaluated setting reaches 'does not leak' against the strongest attack"
    return {"status": "none qualifies", "choice": None, "best_available": best, "reason": why}


def largest_layers(layers: list[tuple[str, int]], count: int) -> list[str]:
    """The ``count`` layers with the most parameters, in the model's order."""
    chosen = {name for name, _ in sorted(layers, key=lambda x: -x[1])[:max(0, count)]}
    return [name for name, _ in layers if name in chosen]


def accuracy_drops(accuracy: dict[str, float | None]) -> dict[str, float | None]:
    """Per setting key, the drop in percentage points against ``accuracy['none']``."""
    base = accuracy.get("none")
    return {k: (None if base is None or a is None else 100.0 * (base - a))
            for k, a in accuracy.items()}


def strongest(levels: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The honest-but-curious level (0-4) that leaks most: highest at-risk share, then level."""
    leaking = [lv for lv in levels if lv["verdict"] == LEAKS and lv["level"] < 5]
    return max(leaking, key=lambda lv: (lv["at_risk_share"] or 0.0, lv["level"]), default=None)


def _defense_keys(point: GridPoint) -> dict[str, Any]:
    keys: dict[str, Any] = {"defense.name": point.defense}
    if point.param is not None:
        keys[f"defense.{point.param}"] = point.value
    return keys


def plan_runs(ladder: Ladder, setup: Setup, budget: dict[str, Any], seeds: list[int],
              level: Level, grid: list[GridPoint], layers: list[str], *,
              train: bool) -> dict[str, list[RunSpec]]:
    """The recommendation's runs by group (``privacy:<key>``, ``utility:<key>``, ``layer:<name>``);
    every config validated here, before the sweep starts."""
    runs: dict[str, list[RunSpec]] = {}
    attack_name = level_config(ladder, level, setup, budget, seed=seeds[0]).attack.name
    for point in grid:
        keys = _defense_keys(point)
        if point.defense != "none":
            keys_adapt = keys | {"attack.adaptive": adaptive_for(attack_name, point.defense)}
            runs[f"privacy:{point.key}"] = [
                run_spec(EXPERIMENT, point.key, level_config(ladder, level, setup, budget, seed=s,
                                                             extra=keys_adapt),
                         kind="defended_attack", labels={"defense": point.key}) for s in seeds]
        if train:
            fl = dict(flatten({"fl": ladder.recommend.get("fl") or {}}))
            base = next(lv for lv in ladder.levels if lv.level == 0)
            cfg = level_config(ladder, base, setup, budget, seed=setup.cfg.seed,
                               extra={**fl, **setup.user_fl, **keys})
            runs[f"utility:{point.key}"] = [run_spec(EXPERIMENT, point.key, cfg,
                                                     kind="privacy_utility",
                                                     labels={"utility": point.key},
                                                     options={"attack": False})]
    for name in layers:
        runs[f"layer:{name}"] = [
            run_spec(EXPERIMENT, f"layer {name}", level_config(
                ladder, level, setup, budget, seed=s, extra={"attack.layers": [name]}),
                labels={"layer": name}) for s in seeds]
    return runs


@dataclass
class Bisection:
    """Binary search for the weakest setting of one defense that does not leak, over its grid
    ordered from the weakest to the strongest setting (privacy is assumed to grow with strength,
    and so does the cost): ``lo``..``hi`` bracket the first safe index (``hi = len``: none yet).
    An ``inconclusive`` setting counts as not safe."""

    points: list[GridPoint]
    lo: int = 0
    hi: int = -1

    def __post_init__(self) -> None:
        if self.hi < 0:
            self.hi = len(self.points)

    def probe(self) -> GridPoint | None:
        return self.points[(self.lo + self.hi) // 2] if self.lo < self.hi else None

    def record(self, safe: bool) -> None:
        mid = (self.lo + self.hi) // 2
        if safe:
            self.hi = mid
        else:
            self.lo = mid + 1


def bisections(grid: list[GridPoint]) -> list[Bisection]:
    """One search per defense of ``grid`` (``none`` left out), in the grid's order."""
    by: dict[str, list[GridPoint]] = {}
    for p in grid:
        if p.defense != "none":
            by.setdefault(p.defense, []).append(p)
    return [Bisection(points) for points in by.values()]


def _evidence(groups: dict[str, list[RunSpec]], rows: dict[str, dict],
              group: str) -> list[RunEvidence]:
    return [RunEvidence.from_row(rows[r.run_id]) for r in groups.get(group, [])
            if r.run_id in rows]


def _point(p: GridPoint, groups: dict[str, list[RunSpec]], rows: dict[str, dict],
           rule: VerdictRule) -> dict[str, Any]:
    """One evaluated setting (its cost is filled in once the baseline accuracy is known)."""
    decided = level_verdict(_evidence(groups, rows, f"privacy:{p.key}"), rule)
    mine = [rows[r.run_id] for r in groups[f"privacy:{p.key}"] if r.run_id in rows]
    dist = [r["distortion"] for r in mine if isinstance(r.get("distortion"), (int, float))]
    return {"key": p.key, "defense": p.defense, "param": p.param, "value": p.value,
            "verdict": decided["verdict"], "at_risk_share": decided["at_risk_share"],
            "leaked_share": decided["leaked_share"], "reason": decided["reason"],
            "distortion": sum(dist) / len(dist) if dist else None}


def search(ladder: Ladder, setup: Setup, budget: dict[str, Any], seeds: list[int], level: Level,
           grid: list[GridPoint], layers: list[str], rule: VerdictRule, *, train: bool,
           sweep: Callable[[list[RunSpec], str, str], dict[str, dict]]
           ) -> tuple[list[dict[str, Any]], dict[str, float | None], list[dict[str, Any]]]:
    """Bisect every defense's grid, a sweep per round (the undefended training and the layers
    in the first): the evaluated settings, the accuracies by key and the layers' verdicts."""
    searches, points, accuracy, layer_rows = bisections(grid), [], {}, []
    first = True
    while True:
        active = [(b, p) for b in searches if (p := b.probe()) is not None]
        if not active and not first:
            break
        batch = ([GridPoint("none")] if first else []) + [p for _, p in active]
        groups = plan_runs(ladder, setup, budget, seeds, level, batch, layers if first else [],
                           train=train)
        rows = sweep([r for runs in groups.values() for r in runs], "audit recommendation",
                     EXPERIMENT)
        accuracy.update({p.key: next((rows[r.run_id].get("final_accuracy") for r in
                                      groups.get(f"utility:{p.key}", []) if r.run_id in rows),
                                     None) for p in batch})
        if first:
            layer_rows = [{"layer": n, "parameters": dict(setup.layers)[n]}
                          | level_verdict(_evidence(groups, rows, f"layer:{n}"), rule)
                          for n in layers]
        for b, p in active:
            points.append(_point(p, groups, rows, rule))
            b.record(points[-1]["verdict"] == SAFE)
        first = False
    rank = {p.key: i for i, p in enumerate(grid)}
    return sorted(points, key=lambda e: rank[e["key"]]), accuracy, layer_rows


def recommend(ladder: Ladder, setup: Setup, budget: dict[str, Any], seeds: list[int],
              levels: list[dict[str, Any]], rule: VerdictRule, options: Any,
              sweep: Callable[[list[RunSpec], str, str], dict[str, dict]]) -> dict[str, Any]:
    """The ``recommendation`` and ``vulnerable_layers`` blocks of ``verdict.json``."""
    top = strongest(levels)
    if top is None:
        return {}
    level = next(lv for lv in ladder.levels if lv.name == top["name"])
    rec = ladder.recommend
    grids = (rec.get("grids") or {}).get(options.budget or ladder.default_budget) or {}
    grid = build_grid(rec.get("defenses") or (), grids)
    layers = largest_layers(setup.layers, int(rec.get("layers", 4)))
    points, accuracy, layer_rows = search(ladder, setup, budget, seeds, level, grid, layers, rule,
                                          train=options.train, sweep=sweep)
    drops = accuracy_drops(accuracy)
    for e in points:
        e["accuracy"], e["accuracy_drop"] = accuracy.get(e["key"]), drops.get(e["key"])
        e["cost"] = e["accuracy_drop"] if options.train else e["distortion"]
    max_drop = (options.max_accuracy_drop if options.max_accuracy_drop is not None
                else float(rec.get("max_accuracy_drop", 2.0)))
    cost = COST_ACCURACY if options.train else COST_DISTORTION
    picked = pick_defense(points, max_drop=max_drop, cost=cost)
    return {"recommendation": picked | {
                "attack": level.name, "cost": cost, "max_accuracy_drop": max_drop,
                "accuracy_without_defense": accuracy.get("none"), "searched": "bisection from "
                "the weakest to the strongest setting of each defense", "settings": points},
            "vulnerable_layers": {
                "attack": level.name, "layers": layer_rows,
                "suffices": [r["layer"] for r in layer_rows if r["verdict"] == LEAKS],
                "defend_only_these": PER_LAYER_NOTE}}
