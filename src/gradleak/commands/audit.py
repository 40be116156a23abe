"""``gradleak audit``: the default audit plan, or the risk ladder of the user's own setup.

* ``gradleak audit [--plan FILE] --out DIR``: the scenarios of an audit plan (default: the
  packaged ``configs/audit.yaml``, what ``make demo`` runs) -> ``DIR/report.md``, ``DIR/index.html``.
* ``gradleak audit --out DIR [--config FILE] [key=value ...]``: the user's setup (their model,
  data and client) attacked by a ladder of server strengths -> ``DIR/verdict.json``, the report
  with the verdict on top and, when it leaks, the cheapest defense that stops it
  (:mod:`gradleak.audit.run`, ``docs/audit.md``).

Both run through the one sweep into ``DIR/results.sqlite``: a rerun skips finished runs, Ctrl-C
keeps them.

Exit codes of the setup mode (the gate fails closed): 0 done; 1 ``--fail-on-leak`` and level 0
or 1 leaks; 2 bad input, or runs failed (the verdict then rests on fewer runs than planned);
3 ``--fail-on-leak`` and the verdict is inconclusive (pass ``--allow-inconclusive`` to accept).
"""

from __future__ import annotations

import argparse

from gradleak.argtypes import finite_float, int_at_least
from gradleak.errors import GradleakError

# Options of the setup mode; None means "not given", so --plan can refuse them.
SETUP_ONLY = {"config": "--config", "budget": "--budget", "seeds": "--seeds",
              "max_seeds": "--max-seeds", "allow_inconclusive": "--allow-inconclusive",
              "fail_on_leak": "--fail-on-leak", "max_accuracy_drop": "--max-accuracy-drop",
              "no_train": "--no-train", "no_recommend": "--no-recommend"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "audit", help="audit a setup (verdict + defense) or run an audit plan; a report",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="reports/demo", help="report folder (also the resume store)")
    p.add_argument("--plan", help="YAML audit plan (default: the packaged configs/audit.yaml)")
    p.add_argument("--config", default=None, help="setup mode: YAML file with config sections")
    p.add_argument("--budget", default=None,
                   help="setup mode: attack budget from configs/audit_ladder.yaml "
                        "(quick or standard; default standard)")
    p.add_argument("--seeds", type=int_at_least(1, 1000), default=None,
                   help="setup mode: runs per round of every undecided level, each a seed with "
                        "its own victims (default 3)")
    p.add_argument("--max-seeds", type=int_at_least(1, 1000), default=None,
                   help="setup mode: the most runs a level gets before it stays inconclusive "
                        "(default 15; 'does not leak' needs about 15 runs without a leak)")
    p.add_argument("--fail-on-leak", action="store_true", default=None,
                   help="setup mode: exit 1 when level 0 or 1 leaks, 3 when the verdict is "
                        "inconclusive (after writing everything)")
    p.add_argument("--allow-inconclusive", action="store_true", default=None,
                   help="setup mode: with --fail-on-leak, exit 0 on an inconclusive verdict")
    p.add_argument("--max-accuracy-drop", type=finite_float(0.0, high=100.0), default=None, metavar="POINTS",
                   help="setup mode: accuracy budget of the recommended defense (default 2)")
    p.add_argument("--no-train", action="store_true", default=None,
                   help="setup mode: utility cost = the update's relative distortion, no FL training")
    p.add_argument("--no-recommend", action="store_true", default=None,
                   help="setup mode: verdict only (no defense sweep, no per-layer attacks)")
    p.add_argument("--update", default=None, metavar="FILE",
                   help="setup mode: audit this captured client update (.safetensors or a "
                        "torch.save state_dict) on the global model (model.checkpoint) instead "
                        "of simulating the client")
    p.add_argument("--update-is", choices=("delta", "weights", "gradient"), default=None,
                   help="with --update: what FILE holds: W_local - W_global (delta, default), "
                        "the client's new weights, or a gradient")
    p.add_argument("--truth", default=None, metavar="FILE.npz",
                   help="with --update: the samples the client trained on (x, y), to score "
                        "the reconstructions")
    p.add_argument("--jobs", type=int_at_least(1, 1024), default=None,
                   help="parallel runs (threads = cores / jobs); default $GRADLEAK_JOBS, else "
                        "2 where there are 2 cores or more")
    p.add_argument("--rerun", action="store_true", help="redo runs that already finished")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="with --plan: overrides applied to every scenario; else: your setup")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch: an audit plan (``--plan``, or nothing given) or the user's setup."""
    if args.plan is not None:
        given = [flag for key, flag in SETUP_ONLY.items() if getattr(args, key) is not None]
        if given:
            raise GradleakError(f"{given[0]} describes your own setup and cannot go with --plan; "
                                "put settings in the plan's base, or drop --plan")
    if args.update is None and (args.update_is is not None or args.truth is not None):
        raise GradleakError(f"{'--update-is' if args.update_is else '--truth'} goes with "
                            "--update FILE (the captured update it describes)")
    if args.update is not None:
        if args.plan is not None:
            raise GradleakError("--update audits one captured update of your setup and cannot go "
                                "with --plan")
        return _captured(args)
    if args.plan is not None or (args.config is None and not args.overrides
                                 and all(getattr(args, k) is None for k in SETUP_ONLY)):
        return _plan(args)
    return _setup(args)


# Options of the simulated audit that mean nothing for one captured update.
NOT_WITH_UPDATE = {"seeds": "--seeds", "max_seeds": "--max-seeds", "no_train": "--no-train",
                   "max_accuracy_drop": "--max-accuracy-drop",
                   "allow_inconclusive": "--allow-inconclusive"}


def _captured(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gradleak.audit.captured_run import audit_captured
    from gradleak.audit.run import AuditOptions

    given = [flag for key, flag in NOT_WITH_UPDATE.items() if getattr(args, key) is not None]
    if given:
        raise GradleakError(f"{given[0]} does not apply to --update: one captured update is one "
                            "trial (no seeds, no defense search); drop it")
    for flag, path in (("--update", args.update), ("--truth", args.truth)):
        if path is not None and not Path(path).is_file():
            raise GradleakError(f"{flag} {path!r} does not exist")
    options = AuditOptions.from_args(args)
    result = audit_captured(options, update=args.update, kind=args.update_is or "delta",
                            truth=args.truth, log=lambda m: print(m, flush=True))
    print(f"verdict: {result['verdict']}  (captured update; worst case {result['worst_case']})")
    print(f"report: {options.out / 'report.md'}\n        {options.out / 'captured.json'}")
    return 1 if args.fail_on_leak and result["fails"] else 0


def _plan(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gradleak.audit.plan import load_audit_plan
    from gradleak.audit.scenarios import copy_scenario_folders, scenarios_plan
    from gradleak.report.audit import render_audit
    from gradleak.runs.sweep import default_jobs, run_sweep

    plan = load_audit_plan(args.plan)
    sweep_plan = scenarios_plan(plan, args.overrides)
    for i, (s, spec) in enumerate(zip(plan["scenarios"], sweep_plan.runs, strict=True), 1):
        print(f"[{i}/{len(plan['scenarios'])}] {s.get('title', s['name'])}  ({spec.run_id})",
              flush=True)
    out = Path(args.out)
    swept = run_sweep(sweep_plan, out, jobs=args.jobs or default_jobs(), progress=not args.quiet,
                      rerun=args.rerun,
                      log=lambda m: print(m, flush=True))
    copy_scenario_folders(out, plan, sweep_plan, set(swept.ok))
    md, page = render_audit(out, plan["scenarios"])
    print(f"{len(swept.ok)} ran, {len(swept.skipped)} kept, {len(swept.failed)} failed")
    print(f"report: {page}\n        {md}")
    return 1 if swept.failed else 0


def _setup(args: argparse.Namespace) -> int:
    from gradleak.audit.run import AuditOptions, audit_setup
    from gradleak.report.audit_verdict import render_verdict

    options = AuditOptions.from_args(args)  # every option checked before any run
    verdict = audit_setup(options, log=lambda m: print(m, flush=True))
    render_verdict(options.out, verdict)
    print(f"verdict: {verdict['verdict']}  ({verdict['summary']})")
    print(f"report: {options.out / 'index.html'}\n        {options.out / 'report.md'}\n"
          f"        {options.out / 'verdict.json'}")
    return exit_code(verdict, fail_on_leak=bool(args.fail_on_leak),
                     allow_inconclusive=bool(args.allow_inconclusive))


EXIT_LEAKS, EXIT_FAILED_RUNS, EXIT_INCONCLUSIVE = 1, 2, 3


def exit_code(verdict: dict, *, fail_on_leak: bool, allow_inconclusive: bool) -> int:
    """The gate: failed runs exit 2 whatever the verdict; with ``fail_on_leak`` a leak exits 1
    and an inconclusive verdict 3 (unless ``allow_inconclusive``)."""
    if verdict.get("failed_runs"):
        print(f"error: {verdict['failed_runs']} runs failed (see results.sqlite); the verdict "
              "rests on fewer runs than planned", flush=True)
        return EXIT_FAILED_RUNS
    if fail_on_leak and verdict["fails"]:
        return EXIT_LEAKS
    if fail_on_leak and verdict["verdict"] != "does not leak" and not allow_inconclusive:
        return EXIT_INCONCLUSIVE
    return 0
