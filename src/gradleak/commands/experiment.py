"""``gradleak experiment list|show|run``: the paper's tables and figures as resumable sweeps."""

from __future__ import annotations

import argparse

from gradleak.argtypes import finite_float, int_at_least


def _list(args: argparse.Namespace) -> int:
    from gradleak.experiments.catalog import experiment_names, load_experiment

    for name in experiment_names():
        exp = load_experiment(name)
        counts = "  ".join(f"{p}: {len(exp.runs(p))} runs" for p in exp.profile_names())
        print(f"{name:<8} {exp.title}\n         tests: {exp.tests}\n         {counts}")
    return 0


def _show(args: argparse.Namespace) -> int:
    import yaml

    from gradleak.experiments.catalog import make_plan

    plan = make_plan(args.name, args.profile, args.overrides)
    data = plan.to_dict()
    print(yaml.safe_dump({k: data[k] for k in ("experiment", "profile", "title", "tests",
                                               "insight", "kind", "settings")}, sort_keys=False))
    for run in plan.runs:
        print(f"{run.run_id}  {run.variant:<16} {run.labels}  seed {run.seed}")
    print(f"{len(plan.runs)} runs")
    return 0


def _run(args: argparse.Namespace) -> int:
    from gradleak.experiments.catalog import make_plan
    from gradleak.runs.sweep import run_sweep

    plan = make_plan(args.name, args.profile, args.overrides)
    result = run_sweep(plan, args.out, jobs=args.jobs, executor=args.executor,
                       address=args.address, gpus_per_task=args.gpus_per_task, retries=args.retries,
                       retry_failed=not args.skip_failed, progress=not args.quiet, log=print)
    print(f"{plan.experiment.name} ({plan.profile}): {len(result.ok)} ran, "
          f"{len(result.skipped)} already stored, {len(result.failed)} failed; store: "
          f"{args.out}/results.sqlite; report: gradleak report {args.out}")
    return 1 if result.failed else 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("experiment", help="run the paper's tables and figures as sweeps",
                              description=__doc__)
    sub = p.add_subparsers(dest="action", metavar="{list,show,run}")
    sub.required = True
    ls = sub.add_parser("list", help="the named experiments and what they test")
    ls.set_defaults(func=_list)
    for name, fn, helptext in (("show", _show, "the runs of an experiment's profile"),
                               ("run", _run, "run (or resume) an experiment's grid")):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("name", help="experiment name (see `gradleak experiment list`) or YAML path")
        q.add_argument("--profile", default="quick",
                       help="quick (2 CPU cores, <= 30 min), long (where defined: <= ~1 h on 2 "
                            "cores, for findings quick cannot decide) or paper")
        q.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config keys applied to every run")
        q.set_defaults(func=fn)
        if name == "run":
            q.add_argument("--out", required=True, help="sweep folder: results.sqlite, runs/, cache/")
            q.add_argument("--jobs", type=int_at_least(1, 1024), default=1,
                           help="parallel runs (threads = cores / jobs)")
            q.add_argument("--executor", default="local", choices=("local", "ray"),
                           help="local (default) or ray")
            q.add_argument("--address", default=None,
                           help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
            q.add_argument("--gpus-per-task", type=finite_float(0.0), default=0.0,
                           help="Ray: GPUs per run; > 0 also runs each run on CUDA")
            q.add_argument("--retries", type=int_at_least(0, 100), default=2,
                           help="Ray: times a run is retried when its worker or node is lost")
            q.add_argument("--skip-failed", action="store_true",
                           help="do not retry runs stored as failed")
            q.add_argument("--quiet", action="store_true", help="no progress bar")

