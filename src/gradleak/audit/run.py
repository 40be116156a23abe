"""The audit of a user's setup, end to end: ladder -> verdict -> recommendation -> ``verdict.json``
(``docs/audit.md``); the command renders the report from it.

Everything runs through the one sweep into ``OUT/results.sqlite`` (experiment ``audit`` for the
ladder, ``audit-recommend`` for the defense sweep, the utility trainings and the per-layer
attacks), so a rerun skips finished runs and Ctrl-C keeps them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradleak.audit.ladder import (
    HONEST,
    LABELS_GRANTED,
    Ladder,
    Level,
    Setup,
    level_config,
    load_ladder,
    read_setup,
    seeds_of,
    skipped,
)
from gradleak.audit.recommend import recommend
from gradleak.audit.scenarios import plan_of, run_spec
from gradleak.audit.verdict import (
    LEAKS,
    RunEvidence,
    VerdictRule,
    best_sample,
    combine,
    level_verdict,
)
from gradleak.experiments.spec import RunSpec
from gradleak.io import write_json

LADDER_EXPERIMENT = "audit"
Log = Callable[[str], None]


@dataclass
class AuditOptions:
    """The command's options for a setup audit (see ``gradleak audit --help``)."""

    out: Path
    config: str | None
    overrides: list[str]
    budget: str | None = None
    seeds: int | None = None
    max_accuracy_drop: float | None = None
    train: bool = True
    recommend: bool = True
    jobs: int = 1
    rerun: bool = False
    progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AuditOptions:
        options = cls(out=Path(args.out), config=args.config, overrides=list(args.overrides),
                      budget=args.budget, seeds=args.seeds,
                      max_accuracy_drop=args.max_accuracy_drop, train=not args.no_train,
                      recommend=not args.no_recommend, jobs=args.jobs, rerun=args.rerun,
                      progress=not args.quiet)
        load_ladder().budget(options.budget)  # an unknown budget fails before any work
        return options


@dataclass
class Sweeper:
    """Runs plans into ``out`` with the options' progress, jobs and rerun settings."""

    out: Path
    options: AuditOptions
    log: Log

    def __call__(self, runs: list[RunSpec], title: str, experiment: str) -> dict[str, dict]:
        """Run (or resume) ``runs``; their stored rows by run id (failed runs have none)."""
        from gradleak.experiments.store import ResultStore
        from gradleak.experiments.sweep import run_sweep

        if not runs:
            return {}
        swept = run_sweep(plan_of(runs, title, experiment), self.out, jobs=self.options.jobs,
                          progress=self.options.progress, rerun=self.options.rerun, log=self.log)
        self.log(f"{title}: {len(swept.ok)} ran, {len(swept.skipped)} kept, "
                 f"{len(swept.failed)} failed")
        wanted = {r.run_id for r in runs}
        with ResultStore(self.out) as store:
            return {r["run_id"]: r for r in store.rows(experiment=experiment, status="ok")
                    if r["run_id"] in wanted}


def ladder_runs(ladder: Ladder, setup: Setup, budget: dict[str, Any],
                seeds: list[int]) -> dict[str, list[RunSpec]]:
    """Per applicable level, its runs (one per seed); every config validated here."""
    out: dict[str, list[RunSpec]] = {}
    for level in ladder.levels:
        if skipped(level, setup) is None:
            out[level.name] = [run_spec(LADDER_EXPERIMENT, level.name,
                                        level_config(ladder, level, setup, budget, seed=s))
                               for s in seeds]
    return out


def level_entry(level: Level, setup: Setup, runs: list[RunSpec], rows: dict[str, dict],
                rule: VerdictRule, out: Path) -> dict[str, Any]:
    """One level of ``verdict.json``."""
    entry: dict[str, Any] = {"level": level.level, "name": level.name, "title": level.title,
                             "server": level.server}
    why = skipped(level, setup)
    if why is not None:
        return entry | {"verdict": "not run", "reason": why, "at_risk_share": None,
                        "leaked_share": None, "seeds": 0, "samples": 0, "best": None}
    evidence = [RunEvidence.from_row(rows[r.run_id]) for r in runs if r.run_id in rows]
    decided = level_verdict(evidence, rule)
    if len(evidence) < len(runs):
        decided["reason"] += f" ({len(runs) - len(evidence)} runs failed: see results.sqlite)"
    if level.labels != "known" and not setup.has_linear:
        decided["reason"] += f"; {LABELS_GRANTED}"
    best = best_sample(evidence)
    if best is not None:
        best |= save_best(out, level.name, best)
    return entry | decided | {"best": best}


def save_best(out: Path, name: str, best: dict[str, Any]) -> dict[str, Any]:
    """``OUT/levels/<name>.png``: the best sample's original (left) beside its reconstruction."""
    from gradleak.images import save_pair
    from gradleak.io import load_weights

    folder = out / "runs" / best["run_id"]
    paths = {"reconstruction_grid": f"runs/{best['run_id']}/reconstruction.png", "image": None}
    tensors = folder / "tensors.pt"
    if tensors.is_file():
        t = load_weights(tensors, str(tensors))
        i = best["sample"]
        save_pair(out / "levels" / f"{name}.png", t["truth"][i], t["reconstruction"][i])
        paths["image"] = f"levels/{name}.png"
    return paths


def audit_setup(options: AuditOptions, log: Log = lambda _m: None) -> dict[str, Any]:
    """Run the audit of ``options``' setup; write and return ``verdict.json``'s content (the
    report is :func:`gradleak.report.audit_verdict.render_verdict` of it)."""
    ladder = load_ladder()
    budget = ladder.budget(options.budget)
    rule = VerdictRule.from_dict(ladder.verdict)
    setup = read_setup(options.config, options.overrides)
    seeds = seeds_of(setup, options.seeds or int(budget.get("seeds", 3)))
    per_level = ladder_runs(ladder, setup, budget, seeds)
    out = options.out
    sweep = Sweeper(out, options, log)
    rows = sweep([r for runs in per_level.values() for r in runs], "audit ladder",
                 LADDER_EXPERIMENT)
    levels = [level_entry(lv, setup, per_level.get(lv.name, []), rows, rule, out)
              for lv in ladder.levels]
    verdict = summarise(levels, setup, options, budget, seeds, rule)
    if options.recommend and verdict["worst_case"] == LEAKS:
        verdict.update(recommend(ladder, setup, budget, seeds, levels, rule, options, sweep))
    write_json(out / "verdict.json", verdict)
    return verdict


def summarise(levels: list[dict[str, Any]], setup: Setup, options: AuditOptions,
              budget: dict[str, Any], seeds: list[int], rule: VerdictRule) -> dict[str, Any]:
    """The top of ``verdict.json``: the overall verdict over levels 0-1, the worst case over the
    honest-but-curious levels 0-4, and what was audited."""
    honest = [lv["verdict"] for lv in levels if lv["level"] in HONEST]
    worst = [lv["verdict"] for lv in levels if lv["level"] < 5 and lv["verdict"] != "not run"]
    overall, worst_case = combine(honest), combine(worst)
    leaking = [lv["name"] for lv in levels if lv["verdict"] == LEAKS]
    summary = (f"leaks at {', '.join(leaking)}" if leaking else
               "no level leaks" if overall == worst_case == "does not leak" else
               "undecided levels: see each level's reason")
    cfg = setup.cfg
    return {
        "verdict": overall, "worst_case": worst_case, "fails": overall == LEAKS,
        "summary": summary,
        "levels": levels,
        "recommendation": {"status": "not needed" if worst_case != LEAKS else "not run",
                           "reason": "no honest-but-curious level leaks" if worst_case != LEAKS
                           else "--no-recommend"},
        "vulnerable_layers": None,
        "config_digest": cfg.digest(),
        "setup": {"model": cfg.model.name, "dataset": cfg.data.dataset, "data_root": cfg.data.root,
                  "resolution": cfg.data.resolution, "num_samples": setup.num_samples,
                  "protocol": cfg.client.protocol, "optimizer": cfg.client.optimizer,
                  "augment": cfg.client.augment, "batchnorm": setup.has_bn},
        "budget": {"name": options.budget or "default", "attack": budget.get("attack"),
                   "seeds": seeds},
        "rule": vars(rule),
        "thresholds": {"psnr": cfg.metrics.psnr_threshold, "lpips": cfg.metrics.lpips_threshold},
    }
