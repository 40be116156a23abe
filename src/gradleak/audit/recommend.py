"""The recommendation when a setup leaks: the cheapest post-processing that stops the strongest
attacker of the ladder, and the most vulnerable layers (paper Sec. 7: defend the vulnerable parts
lightly).

* **Privacy of a defense setting**: judged against the strongest attacker, i.e. the worst over
  every honest-but-curious level that leaks without the defense and, for each, the non-adaptive
  attack and (where the defense has a differentiable surrogate and the attack an adaptive mode)
  the adaptive one (``attack.adaptive=true``; neither is always stronger: the non-adaptive
  attack wins against clipping and top-k 0.9 in this project's measurements). A trial (one seed
  and its victims) leaks when any of these attacks reconstructs one of its samples; the
  setting's verdict is the ladder's sequential rule over trials, run in rounds until decided.
* **Search** (:mod:`gradleak.audit.search`): each defense's grid (weakest to strongest) is
  bisected on one round of trials for its weakest setting in which no trial leaked (the screen:
  a leaking setting costs about three runs). The settings that passed get their utility measured
  and are then confirmed cheapest first with the full sequential rule (up to
  ``recommend.confirmations``), so the chosen setting's "does not leak" is measured, never
  inferred; a grid where a weaker setting does not leak but a stronger one leaks is reported as
  non-monotonic.
* **Model and training switches** (:mod:`gradleak.audit.switches`): PRECODE, MixUp and
  InstaHide, each judged against its breaking attack as the adaptive attacker; one that cannot
  apply to the setup is listed in ``skipped`` with the reason.
* **Breaking attacks** (``recommend.breaking_attacks``): the heuristics that published adaptive
  attacks break (Soteria, Outpost and the switches) meet their adaptive attackers on the screened
  trials even when they are not confirmed (:meth:`~gradleak.audit.search.Search.try_breakers`),
  so the listing says "broken by <attack>" or that the screen held against it, never only what
  the plain attack saw.
* **Text models** also search LoRA configurations (``recommend.lora_ranks``, or a budget's
  ``grids.lora``; ranks below the client's own): the client trains and shares only rank-r
  adapters (``model.lora_rank``), judged and costed like a defense setting (key ``lora-rank=r``).
* **Utility cost**: the accuracy drop over paired FL trainings (:mod:`gradleak.audit.utility`),
  with its interval and the test split's resolution; with ``--no-train`` the update's relative
  distortion ``||D(u) - u|| / ||u||`` (mean over runs) instead. Under FedAvg signSGD is sent as
  ``mean|v| * sign(v)`` per tensor (``defense.scale_sign``): the server applies an update with
  step 1, so bare signs would wreck the model by construction, not by measurement.
* :func:`pick_defense`: the least costly setting whose verdict is ``does not leak`` within the
  accuracy budget; when none qualifies, the best available (lowest run leak rate) is shown.
* Layers: the ``recommend.layers`` largest parameterised layers attacked one at a time
  (``attack.layers=[name]``) by the strongest leaking level, over one round of trials; a layer
  whose gradient alone leaks suffices for the attack.
"""

from __future__ import annotations

import math
from typing import Any

from gradleak.audit.ladder import Ladder, Level, Setup, Trial, level_config
from gradleak.audit.scenarios import run_spec
from gradleak.audit.search import (  # noqa: F401 (adaptive_for, Bisection: public here too)
    EXPERIMENT,
    LORA,
    Bisection,
    Found,
    Search,
    Sweep,
    adaptive_for,
    bisections,
    lora_points,
)
from gradleak.audit.switches import SWITCHES, switch_points
from gradleak.audit.utility import paired_cost
from gradleak.audit.verdict import LEAKS, SAFE, VerdictRule, evidence, level_verdict
from gradleak.defenses.grid import build_grid
from gradleak.metrics import within_budget

COST_ACCURACY, COST_DISTORTION = "accuracy_drop", "distortion"
PER_LAYER_NOTE = ("not measured: gradleak's defenses post-process the whole update (there is no "
                  "key to defend only some layers), so defending just these layers cannot be "
                  "run; defend the whole update with the recommended setting")

def pick_defense(points: list[dict[str, Any]], *, max_drop: float | None,
                 cost: str = COST_ACCURACY) -> dict[str, Any]:
    """The recommendation from evaluated defense settings.

    ``points``: ``{key, defense, param, value, verdict, at_risk_share, cost}`` (``cost``: accuracy
    drop in points, or the relative distortion; None when unknown). Returns ``{status, choice,
    best_available, reason}``: ``status`` is ``recommended`` (the cheapest ``does not leak``
    setting within ``max_drop``, which applies to accuracy costs only; ties: the order given),
    ``unresolved`` (that setting, but its ``resolved`` is false: the test split is too small to
    resolve the budget) or ``none qualifies`` (then ``best_available`` is the setting with the
    lowest run leak rate, then the lowest cost)."""

    def cost_of(p: dict[str, Any]) -> float:
        return p["cost"] if isinstance(p.get("cost"), (int, float)) else math.inf

    safe = [p for p in points if p.get("verdict") == SAFE and p.get("cost") is not None
            and p.get("confirmed", True)]
    within = [p for p in safe if cost != COST_ACCURACY or within_budget(cost_of(p), max_drop)]
    if within:
        choice = min(within, key=cost_of)  # min keeps the first of equal costs
        unit = "points of accuracy" if cost == COST_ACCURACY else "relative distortion"
        reason = (f"{choice['key']}: does not leak at a cost of {cost_of(choice):.3g} {unit}, "
                  "the cheapest such setting")
        if cost == COST_ACCURACY and choice.get("resolved") is False:
            step = choice.get("resolution_points")
            return {"status": "unresolved", "choice": choice, "best_available": choice,
                    "reason": f"{reason}; but the test split resolves accuracy only in steps of "
                              f"{step if step is not None else math.inf:.3g} points against a "
                              f"{max_drop:g}-point budget: give a larger test split "
                              "(data.test_root or fl.test_samples)"}
        return {"status": "recommended", "choice": choice, "best_available": choice,
                "reason": reason}

    def leak_rate(p: dict[str, Any]) -> float:
        rate = p.get("run_leak_rate", p.get("at_risk_share"))
        return rate if rate is not None else math.inf

    ranked = sorted(points, key=lambda p: (leak_rate(p), cost_of(p)))
    best = ranked[0] if ranked else None
    if safe:
        why = (f"the settings that do not leak cost more than {max_drop:g} points of accuracy "
               f"(cheapest: {min(safe, key=cost_of)['key']}, {cost_of(min(safe, key=cost_of)):.3g})")
    else:
        why = "no evaluated setting reaches 'does not leak' against the strongest attack"
    return {"status": "none qualifies", "choice": None, "best_available": best, "reason": why}


LEARN_MARGIN = 5.0  # points above chance (or the untrained model) for a training that learns


def learning_check(final: list[float], initial: list[float | None],
                   num_classes: int) -> str | None:
    """Why accuracy costs cannot rank defenses (None: they can): the undefended trainings end
    within :data:`LEARN_MARGIN` points of chance (``1 / num_classes``) or of the untrained
    model's accuracy, so every drop measured against them is noise."""
    if not final:
        return None
    acc = sum(final) / len(final)
    start = [a for a in initial if a is not None]
    floor = max(1.0 / max(1, num_classes), sum(start) / len(start) if start else 0.0)
    if 100.0 * (acc - floor) >= LEARN_MARGIN:
        return None
    return (f"not resolved: the undefended training does not learn (accuracy {100 * acc:.1f} %, "
            f"against {100 * floor:.1f} % by chance or before training): accuracy drops against "
            "it are noise, so no setting is picked by them; train longer (the ladder's "
            "recommend.fl keys, or fl.rounds=...) or use --no-train (the update's distortion)")


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
    """The honest-but-curious level (0-4) that leaks most: highest run leak rate, then level."""
    leaking = [lv for lv in levels if lv["verdict"] == LEAKS and lv["level"] < 5]
    return max(leaking, key=lambda lv: (lv.get("run_leak_rate") or 0.0, lv["level"]),
               default=None)


def monotonic_breaks(points: list[dict[str, Any]]) -> list[str]:
    """Pairs where a weaker setting of a defense does not leak but a stronger one leaks
    (``points`` in grid order, weakest first within each defense)."""
    breaks = []
    for i, weak in enumerate(points):
        for strong in points[i + 1:]:
            if (weak["defense"] == strong["defense"] and weak["verdict"] == SAFE
                    and strong["verdict"] == LEAKS):
                breaks.append(f"{weak['key']} does not leak but the stronger {strong['key']} leaks")
    return breaks


def layer_verdicts(ladder: Ladder, setup: Setup, budget: dict[str, Any], trials: list[Trial],
                   level: Level, rule: VerdictRule, sweep: Sweep) -> list[dict[str, Any]]:
    """The largest layers, each attacked alone by ``level`` over one round of trials."""
    layers = largest_layers(setup.layers, int(ladder.recommend.get("layers", 4)))
    groups = {name: [run_spec(EXPERIMENT, f"layer {name}", level_config(
        ladder, level, setup, budget, seed=t.seed, extra={**t.keys(), "attack.layers": [name]}),
        labels={"layer": name}) for t in trials[:rule.round_size]] for name in layers}
    rows = sweep([r for specs in groups.values() for r in specs], "audit layers", EXPERIMENT)
    return [{"layer": n, "parameters": dict(setup.layers)[n]} | level_verdict(
        evidence(groups[n], rows), rule) for n in layers]


def costs(found: Found, *, train: bool, max_drop: float) -> None:
    """Fill each setting's utility cost in place (paired drops, or the distortion)."""
    base = found.accuracy.get("none", [])
    for e in found.points:
        mine = found.accuracy.get(e["key"], [])
        cost = paired_cost(base, mine, test_samples=found.test_samples.get(e["key"]),
                           max_drop=max_drop)
        acc = [a for a in mine if a is not None]
        eps = [v for v in found.epsilon.get(e["key"], []) if isinstance(v, (int, float))]
        e |= cost.to_dict() | {"accuracy": sum(acc) / len(acc) if acc else None,
                               # DP-SGD: the largest client ε of the paired trainings (Opacus'
                               # RDP accountant at defense.dp_delta); None for other defenses
                               "epsilon": max(eps) if eps else None}
        e["cost"] = e["accuracy_drop"] if train else e["distortion"]


def confirm_cheapest(srch: Search, grid: list, *, max_drop: float, limit: int) -> None:
    """The settings that passed the screen, cheapest first: measure their utility, then confirm
    them one by one with the full sequential rule until one does not leak within the budget."""
    passed = [p for p in srch.probes.values() if p.result and p.result["runs_leaked"] == 0]
    srch.measure_utility([p.point for p in passed])
    found = srch.found(grid)
    costs(found, train=srch.train, max_drop=max_drop)
    cost = {e["key"]: e["cost"] for e in found.points}
    order = sorted(passed, key=lambda p: (cost.get(p.point.key) is None,
                                          cost.get(p.point.key) or 0.0))
    for probe in order[:max(0, limit)]:
        c = cost.get(probe.point.key)
        if srch.train and c is not None and c > max_drop:
            break  # sorted by cost: no later setting fits the budget either
        if srch.confirm(probe).get("verdict") == SAFE:
            return


def recommend(ladder: Ladder, setup: Setup, budget: dict[str, Any], trials: list[Trial],
              levels: list[dict[str, Any]], rule: VerdictRule, options: Any,
              sweep: Sweep) -> dict[str, Any]:
    """The ``recommendation`` and ``vulnerable_layers`` blocks of ``verdict.json``."""
    top = strongest(levels)
    if top is None:
        return {}
    by_name = {lv.name: lv for lv in ladder.levels}
    leaking = [by_name[lv["name"]] for lv in levels if lv["verdict"] == LEAKS and lv["level"] < 5]
    rec = ladder.recommend
    grids = dict((rec.get("grids") or {}).get(options.budget or ladder.default_budget) or {})
    ranks = grids.pop(LORA, rec.get("lora_ranks") or [])
    names = list(rec.get("defenses") or ())
    if setup.has_bn and "dpsgd" in names:  # per-sample clipping cannot run through train-mode BN
        names.remove("dpsgd")
    switches, skipped = switch_points(names, {k: grids.pop(k) for k in list(grids)
                                              if k in SWITCHES}, setup)
    grid = build_grid([n for n in names if n not in SWITCHES], grids) + switches
    if setup.text:  # a language model's client may also share only LoRA adapters
        grid += lora_points(list(ranks), int(setup.cfg.model.lora_rank))
    max_drop = (options.max_accuracy_drop if options.max_accuracy_drop is not None
                else float(rec.get("max_accuracy_drop", 2.0)))
    srch = Search(ladder, setup, budget, trials, leaking, rule, sweep, train=options.train)
    srch.screen(grid)
    confirm_cheapest(srch, grid, max_drop=max_drop, limit=int(rec.get("confirmations", 3)))
    srch.try_breakers(set(rec.get("breaking_attacks") or ()))
    found = srch.found(grid)
    costs(found, train=options.train, max_drop=max_drop)
    cost = COST_ACCURACY if options.train else COST_DISTORTION
    picked = pick_defense(found.points, max_drop=max_drop, cost=cost)
    known = [a for a in found.accuracy.get("none", []) if a is not None]
    why = learning_check(known, found.initial.get("none", []),
                         int(getattr(setup.dataset, "num_classes", 0) or 0)) if options.train else None
    if why is not None:
        picked = {"status": "not resolved", "choice": None,
                  "best_available": picked.get("best_available"), "reason": why}
    # attack.layers restricts what a matching attack matches; the span attacks (text) read the
    # attention gradients whatever it says, so per-layer runs would measure nothing there.
    layer_rows = ([] if setup.text else
                  layer_verdicts(ladder, setup, budget, trials, by_name[top["name"]], rule, sweep))
    return {"recommendation": picked | {
                "attack": top["name"],
                "attackers": sorted({a for e in found.points for a in e["attackers"]}),
                "cost": cost, "max_accuracy_drop": max_drop,
                "accuracy_without_defense": sum(known) / len(known) if known else None,
                "searched": "bisection from the weakest to the strongest setting of each "
                            "defense on one round of trials (a setting passes when no trial "
                            "leaked), then the passing settings confirmed cheapest first with the "
                            "full sequential rule",
                "monotonic_breaks": monotonic_breaks(found.points), "settings": found.points,
                "skipped": skipped},
            "vulnerable_layers": None if setup.text else {
                "attack": top["name"], "layers": layer_rows,
                "suffices": [r["layer"] for r in layer_rows if r["verdict"] == LEAKS],
                "defend_only_these": PER_LAYER_NOTE}}
