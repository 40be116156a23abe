"""The audit of a user's setup, end to end: ladder -> verdict -> recommendation -> ``verdict.json``
(``docs/audit.md``); the command renders the report from it.

Everything runs through the one sweep into ``OUT/results.sqlite`` (experiment ``audit`` for the
ladder, ``audit-recommend`` for the defense sweep, the utility trainings and the per-layer
attacks), so a rerun skips finished runs and Ctrl-C keeps them.

The ladder runs in rounds (:mod:`gradleak.audit.sequential`): every undecided level gets the next
``--seeds`` trials, until each level is decided or has ``--max-seeds`` runs. A trial is one seed
with its own victim samples (:func:`gradleak.audit.ladder.draw_trials`: no two trials share a
victim), the same trial at every level so that levels compare like with like.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradleak import __version__
from gradleak.audit.estimate import safe_estimate, warn_ineffective
from gradleak.audit.ladder import (
    HONEST,
    LABELS_GRANTED,
    Ladder,
    Level,
    Setup,
    Trial,
    check_user_attack_keys,
    draw_trials,
    level_config,
    load_ladder,
    read_setup,
    skipped,
    user_keys,
)
from gradleak.audit.plain import plain_summary
from gradleak.audit.recommend import recommend
from gradleak.audit.scenarios import plan_of, run_spec
from gradleak.audit.verdict import (
    LEAKS,
    SAFE,
    VerdictRule,
    best_sample,
    combine,
    evidence,
    level_verdict,
)
from gradleak.errors import GradleakError
from gradleak.io import write_json
from gradleak.runs.spec import RunSpec

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
    max_seeds: int | None = None
    max_accuracy_drop: float | None = None
    train: bool = True
    recommend: bool = True
    jobs: int = 1
    rerun: bool = False
    progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AuditOptions:
        from gradleak.runs.sweep import default_jobs

        options = cls(out=Path(args.out), config=args.config, overrides=list(args.overrides),
                      budget=args.budget, seeds=args.seeds,
                      max_seeds=getattr(args, "max_seeds", None),
                      max_accuracy_drop=args.max_accuracy_drop, train=not args.no_train,
                      recommend=not args.no_recommend, jobs=args.jobs or default_jobs(),
                      rerun=args.rerun,
                      progress=not args.quiet)
        load_ladder().budget(options.budget)  # an unknown budget fails before any work
        if options.seeds and options.max_seeds and options.max_seeds < options.seeds:
            raise GradleakError(f"bad value {options.max_seeds} for --max-seeds: at least "
                                f"--seeds ({options.seeds})")
        return options

    def rule(self, ladder: Ladder, budget: dict[str, Any]) -> VerdictRule:
        """The verdict rule with this audit's round size and cap."""
        size = self.seeds or int(budget.get("seeds", 3))
        cap = self.max_seeds or int(budget.get("max_seeds", 15))
        return VerdictRule.from_dict({**ladder.verdict, "round_size": size,
                                      "max_runs": max(cap, size)})


@dataclass
class Sweeper:
    """Runs plans into ``out`` with the options' progress, jobs and rerun settings."""

    out: Path
    options: AuditOptions
    log: Log

    failed: set[str] = field(default_factory=set)

    def __call__(self, runs: list[RunSpec], title: str, experiment: str) -> dict[str, dict]:
        """Run (or resume) ``runs``; their stored rows by run id (failed runs have none)."""
        from gradleak.runs.store import ResultStore
        from gradleak.runs.sweep import run_sweep

        if not runs:
            return {}
        swept = run_sweep(plan_of(runs, title, experiment), self.out, jobs=self.options.jobs,
                          progress=self.options.progress, rerun=self.options.rerun, log=self.log)
        self.log(f"{title}: {len(swept.ok)} ran, {len(swept.skipped)} kept, "
                 f"{len(swept.failed)} failed")
        wanted = {r.run_id for r in runs}
        with ResultStore(self.out) as store:
            rows = {r["run_id"]: r for r in store.rows(experiment=experiment, status="ok")
                    if r["run_id"] in wanted}
        self.failed |= wanted - set(rows)
        return rows


def ladder_runs(ladder: Ladder, setup: Setup, budget: dict[str, Any], trials: list[Trial],
                levels: list[Level] | None = None) -> dict[str, list[RunSpec]]:
    """Per applicable level (of ``levels``, default all), its runs on ``trials``; every config
    validated here."""
    out: dict[str, list[RunSpec]] = {}
    for level in levels if levels is not None else ladder.levels:
        if skipped(level, setup) is None:
            out[level.name] = [run_spec(LADDER_EXPERIMENT, level.name,
                                        level_config(ladder, level, setup, budget, seed=t.seed,
                                                     extra=t.keys())) for t in trials]
    return out


def level_entry(level: Level, setup: Setup, runs: list[RunSpec], rows: dict[str, dict],
                rule: VerdictRule, out: Path) -> dict[str, Any]:
    """One level of ``verdict.json``, once its rounds are over."""
    entry: dict[str, Any] = {"level": level.level, "name": level.name, "title": level.title,
                             "server": level.server}
    why = skipped(level, setup)
    if why is not None:
        return entry | {"verdict": "not run", "reason": why, "at_risk_share": None,
                        "leaked_share": None, "seeds": 0, "samples": 0, "best": None}
    found = evidence(runs, rows)
    decided = level_verdict(found, rule)
    decided.pop("continue")  # the rounds are over
    decided["rounds"] = -(-len(runs) // rule.round_size)
    if len(found) < len(runs):
        decided["reason"] += f" ({len(runs) - len(found)} runs failed: see results.sqlite)"
    if level.labels != "known" and not setup.has_linear:
        decided["reason"] += f"; {LABELS_GRANTED}"
    best = best_sample(found)
    if best is not None and "rouge1" in best:  # text: the sentences are the evidence
        per = ((rows.get(best["run_id"]) or {}).get("result") or {}).get("per_sample") or {}
        best |= {"image": None, "reconstruction_grid": None, "baselines": {"reference": {
            m: (per.get(f"baseline_{m}") or [None] * (best["sample"] + 1))[best["sample"]]
            for m in ("rouge1", "semantic")}}}
    elif best is not None:
        best |= save_best(out, level.name, best) | {"baselines": sample_baselines(
            rows.get(best["run_id"]) or {}, best["sample"])}
    return entry | decided | {"best": best}


def sample_baselines(row: dict[str, Any], i: int) -> dict[str, dict[str, float | None]]:
    """The update-free baselines' scores of sample ``i`` of a stored run (``{}`` if none)."""
    stored = (row.get("result") or {}).get("baselines") or {}
    return {name: {m: (v[m][i] if v.get(m) else None) for m in ("psnr", "lpips")}
            for name, v in stored.items() if isinstance(v, dict)}


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
    setup = read_setup(options.config, options.overrides)
    ladder = load_ladder().for_setup(setup)
    check_user_attack_keys(ladder, setup)
    budget = ladder.budget(options.budget)
    rule = options.rule(ladder, budget)
    trials = draw_trials(setup, rule.max_runs)
    if len(trials) < rule.max_runs:
        rule = VerdictRule.from_dict({**vars(rule), "max_runs": max(len(trials), 1)})
    warn_ineffective(setup, user_keys(options.config, options.overrides))
    est, line = safe_estimate(ladder, setup, budget, rule, jobs=options.jobs)
    log(line)
    out = options.out
    sweep = Sweeper(out, options, log)
    levels = ladder_rounds(ladder, setup, budget, trials, rule, sweep)
    verdict = summarise(levels, setup, options, budget, [t.seed for t in trials[:max(
        (lv["seeds"] for lv in levels), default=0)]], rule)
    verdict["trials"] = {"victims_fixed": setup.victims_fixed, "note": setup.trials_note(),
                         "victims": {t.seed: t.victims for t in trials}}
    if options.recommend and verdict["worst_case"] == LEAKS:
        verdict.update(recommend(ladder, setup, budget, trials, levels, rule, options, sweep))
    verdict["failed_runs"] = len(sweep.failed)
    verdict["estimate"] = est
    write_json(out / "verdict.json", verdict)
    return verdict


def ladder_rounds(ladder: Ladder, setup: Setup, budget: dict[str, Any], trials: list[Trial],
                  rule: VerdictRule, sweep: Sweeper) -> list[dict[str, Any]]:
    """The ladder in rounds of ``rule.round_size`` trials: each round runs the next trials of
    the levels still undecided; a level stops as soon as it is decided (or at ``max_runs``)."""
    per_level: dict[str, list[RunSpec]] = {}
    active = [lv for lv in ladder.levels if skipped(lv, setup) is None]
    rows: dict[str, dict] = {}
    done = 0
    while active:
        batch = trials[done:done + rule.round_size]
        new = ladder_runs(ladder, setup, budget, batch, active)
        for name, specs in new.items():
            per_level.setdefault(name, []).extend(specs)
        rows |= sweep([r for specs in new.values() for r in specs],
                      f"audit ladder, round {done // rule.round_size + 1}", LADDER_EXPERIMENT)
        done += len(batch)
        more = done < len(trials)
        active = [lv for lv in active
                  if level_verdict(evidence(per_level[lv.name], rows), rule, more=more)["continue"]]
    levels = [level_entry(lv, setup, per_level.get(lv.name, []), rows, rule, sweep.out)
              for lv in ladder.levels]
    return levels


def summarise(levels: list[dict[str, Any]], setup: Setup, options: AuditOptions,
              budget: dict[str, Any], seeds: list[int], rule: VerdictRule) -> dict[str, Any]:
    """The top of ``verdict.json``: the overall verdict over levels 0-1, the worst case over the
    honest-but-curious levels 0-4 (the malicious reference is never part of either), the claim
    each rests on, and what was audited."""
    honest = [lv["verdict"] for lv in levels if lv["level"] in HONEST]
    ran = [lv for lv in levels if lv["level"] < 5 and lv["verdict"] != "not run"]
    overall, worst_case = combine(honest), combine([lv["verdict"] for lv in ran])
    leaking = [lv["name"] for lv in ran if lv["verdict"] == LEAKS]
    undecided = [lv["name"] for lv in ran if lv["verdict"] not in (LEAKS, SAFE)]
    summary = (f"leaks at {', '.join(leaking)}" if leaking else
               f"undecided at {', '.join(undecided)}: see each level's reason" if undecided else
               "no level leaks")
    malicious = next((lv for lv in levels if lv["level"] == 5), None)
    attack = effective_attack(budget, setup)
    cfg = setup.cfg
    thresholds = ({"rouge1": cfg.metrics.rouge_threshold, "semantic": cfg.metrics.semantic_threshold}
                  if setup.text else
                  {"psnr": cfg.metrics.psnr_threshold, "lpips": cfg.metrics.lpips_threshold})
    return {
        "verdict": overall, "worst_case": worst_case, "fails": overall == LEAKS,
        "summary": summary, "claim": claim(ran, worst_case, attack, rule),
        "plain": plain_summary(levels, text=setup.text, num_samples=setup.num_samples,
                               thresholds=thresholds),
        "malicious_reference": None if malicious is None else malicious["verdict"],
        "levels": levels,
        "recommendation": _no_recommendation(worst_case),
        "vulnerable_layers": None,
        "config_digest": cfg.digest(),
        "setup": {"model": cfg.model.name, "dataset": cfg.data.dataset, "data_root": cfg.data.root,
                  "resolution": cfg.data.resolution, "num_samples": setup.num_samples,
                  "protocol": cfg.client.protocol, "optimizer": cfg.client.optimizer,
                  "augment": cfg.client.augment, "batchnorm": setup.has_bn,
                  "lr": cfg.client.lr, "momentum": cfg.client.momentum,
                  "batch_size": cfg.client.batch_size,
                  "local_epochs": cfg.client.local_epochs,
                  "modality": "text" if setup.text else "image",
                  "weight_decay": cfg.client.weight_decay, "nesterov": cfg.client.nesterov,
                  **setup.described, "levels_run": [lv["name"] for lv in ran],
                  "gradleak_version": __version__,
                  **({"max_length": cfg.data.max_length, "lora_rank": cfg.model.lora_rank,
                      "frozen": list(cfg.model.frozen)} if setup.text else {})},
        "budget": {"name": options.budget or "default", "attack": budget.get("attack"),
                   "effective": attack,
                   "seeds": seeds, "round_size": rule.round_size, "max_seeds": rule.max_runs},
        "rule": vars(rule),
        "thresholds": thresholds,
    }


def _no_recommendation(worst_case: str) -> dict[str, str]:
    if worst_case == SAFE:
        return {"status": "not needed", "reason": "no honest-but-curious level leaks, each with "
                "an upper bound below the floor"}
    if worst_case == LEAKS:
        return {"status": "not run", "reason": "--no-recommend"}
    return {"status": "not run", "reason": "the worst case is inconclusive: decide it first "
            "(see each level's suggestion); a defense cannot be judged against an undecided leak"}


def effective_attack(budget: dict[str, Any], setup: Setup) -> dict[str, Any]:
    """The budget's attack keys with the user's ``attack.*`` keys over them (what ran)."""
    given = {k.split(".", 1)[1]: v for k, v in setup.user_attack.items()}
    return {**(budget.get("attack") or {}), **{k: v for k, v in given.items()
                                               if k in ("iterations", "restarts")}}


def claim(ran: list[dict[str, Any]], worst_case: str, attack: dict[str, Any],
          rule: VerdictRule) -> str:
    """What the worst-case verdict shows, in one sentence (never an unqualified "safe")."""
    at = f"{attack.get('iterations', '?')} iterations x {attack.get('restarts', 1)} restarts"
    if worst_case == SAFE:
        top = max(lv["level"] for lv in ran)
        worst = max(ran, key=lambda lv: lv["bound"]["upper"])
        return (f"no reconstruction by the ladder's attacks up to level {top}, at {at}, in "
                f"{min(lv['runs'] for lv in ran)} or more runs per level: the run leak rate is at "
                f"most {worst['bound']['upper']:.0%} at {rule.confidence:.0%} confidence")
    if worst_case == LEAKS:
        lv = next(lv for lv in ran if lv["verdict"] == LEAKS)
        return (f"{lv['runs_leaked']} of {lv['runs']} runs leaked at {lv['name']} ({at}): the "
                f"run leak rate is at least {lv['bound']['lower']:.0%} at "
                f"{rule.confidence:.0%} confidence")
    return f"undecided at {at}: see each level's reason and suggestion"
