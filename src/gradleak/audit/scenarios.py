"""An audit plan (the packaged ``configs/audit.yaml`` or ``--plan FILE``) run by the one sweep.

Each scenario of the plan is one run of kind ``attack`` in ``OUT/results.sqlite`` (its files in
``OUT/runs/<run id>/``); a finished run is not redone. ``OUT/<scenario name>/`` keeps a copy of
its ``result.json``, ``reconstruction.png`` and ``config.yaml``, refreshed only when the run ran
again (so a resumed audit leaves finished scenarios' files untouched).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gradleak.config import Config, flatten, load_config
from gradleak.io import atomic_write
from gradleak.runs.spec import Experiment, Plan, RunSpec

EXPERIMENT = "audit"
COPIED = ("config.yaml", "reconstruction.png", "result.json")  # result.json last: it marks done


def scenario_configs(plan: dict[str, Any], overrides: Sequence[str]) -> list[Config]:
    """Every scenario's validated config: the plan's ``base``, its ``set``, then ``overrides``."""
    base = dict(flatten(plan.get("base") or {}))
    return [load_config(None, list(overrides), base={**base, **dict(flatten(s.get("set") or {}))})
            for s in plan["scenarios"]]


def run_spec(experiment: str, variant: str, cfg: Config, *, kind: str = "attack",
             labels: dict[str, Any] | None = None,
             options: dict[str, Any] | None = None) -> RunSpec:
    """One sweep run of the fully resolved ``cfg`` (every key, so the run is that config)."""
    return RunSpec.of(experiment, kind, variant,
                      labels if labels is not None else {"level": variant}, cfg, options)


def plan_of(runs: list[RunSpec], title: str, experiment: str = EXPERIMENT) -> Plan:
    """A sweep :class:`Plan` over ready-made runs (their configs were validated already)."""
    exp = Experiment(name=experiment, title=title, tests="", insight="", kind=runs[0].kind,
                     spec={"title": title})
    return Plan(exp, "paper", runs)


def scenarios_plan(plan: dict[str, Any], overrides: Sequence[str]) -> Plan:
    """The audit plan as a sweep plan: one ``attack`` run per scenario."""
    configs = scenario_configs(plan, overrides)  # every scenario validated before any runs
    runs = [run_spec(EXPERIMENT, s["name"], cfg, labels={"scenario": s["name"]})
            for s, cfg in zip(plan["scenarios"], configs, strict=True)]
    return plan_of(runs, str(plan.get("title") or "gradleak audit"))


def copy_scenario_folders(out: Path, plan: dict[str, Any], sweep_plan: Plan, ran: set[str],
                          log: Callable[[str], None] = lambda _m: None) -> None:
    """``OUT/<name>/`` from ``OUT/runs/<run id>/`` for runs that ran now or whose copy is missing
    or stale (another config); the files are replaced atomically, ``result.json`` last."""
    for scenario, run in zip(plan["scenarios"], sweep_plan.runs, strict=True):
        source, dest = out / "runs" / run.run_id, out / scenario["name"]
        if not (source / "result.json").is_file():
            continue  # failed: its error is in the store and in the sweep's log
        if run.run_id not in ran and _same_run(dest / "result.json", source / "result.json"):
            continue
        for name in COPIED:
            if (source / name).is_file():
                atomic_write(dest / name, lambda p, src=source / name: shutil.copyfile(src, p))
        log(f"    {scenario['name']}: {dest}")


def _same_run(copy: Path, source: Path) -> bool:
    try:
        a, b = json.loads(copy.read_text()), json.loads(source.read_text())
    except (OSError, ValueError):
        return False  # missing or damaged: copied again
    return isinstance(a, dict) and a.get("config_digest") == b.get("config_digest")
