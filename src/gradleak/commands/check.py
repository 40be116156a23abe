"""``gradleak check``: resolve and validate everything an audit of this setup would use, then say
in a few lines what will be audited and roughly how long it will take.

It imports the model file and runs it on the victim's samples (the audit's setup probe), reads
the data (classes, test split), loads the checkpoint, resolves the threat levels and the budget,
and calibrates one client round and a few attack iterations on this machine
(:mod:`gradleak.audit.estimate`). Keys without effect in this setup get one warning each.
Bad input is one line and exit 2, before any audit run.
"""

from __future__ import annotations

import argparse

from gradleak.argtypes import int_at_least


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("check", help="validate an audit setup and estimate its time",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML file with config sections")
    p.add_argument("--budget", default=None, help="attack budget (quick or standard)")
    p.add_argument("--seeds", type=int_at_least(1, 1000), default=None,
                   help="runs per round (as gradleak audit --seeds)")
    p.add_argument("--max-seeds", type=int_at_least(1, 1000), default=None,
                   help="the most runs per level (as gradleak audit --max-seeds)")
    p.add_argument("--jobs", type=int_at_least(1, 1024), default=None,
                   help="parallel runs (as gradleak audit --jobs; default the audit's)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="your setup")
    p.set_defaults(func=run)


def describe(setup, ladder, budget, rule) -> list[str]:  # noqa: ANN001 (internal)
    """What will be audited, in lines."""
    from gradleak.audit.ladder import skipped

    st, cfg = setup.described, setup.cfg
    data = st.get("data") or {}
    shape = (f"max_length {cfg.data.max_length}" if setup.text else
             f"{data.get('channels')} channel(s), {data.get('resolution')} px")
    attack = budget.get("attack") or {}
    ran = [lv.name for lv in ladder.levels if skipped(lv, setup) is None]
    not_run = [f"{lv.name} ({skipped(lv, setup).removeprefix('not run: ')})" for lv in ladder.levels
               if skipped(lv, setup) is not None]
    return [
        f"model: {cfg.model.name} ({st.get('model_class')}), {st.get('parameters', 0):,} "
        f"parameters, checkpoint {st.get('checkpoint') or 'none (weights from the seed)'}; "
        "built and run on the victim's samples: ok",
        f"data: {data.get('name')} ({cfg.data.root or 'built in'}): {data.get('size')} samples, "
        f"{data.get('classes')} classes, {shape}; split: {data.get('split') or '-'}",
        f"client: {cfg.client.protocol}, {cfg.client.optimizer} lr {cfg.client.lr}, "
        f"E {cfg.client.local_epochs}, B {cfg.client.batch_size or 'all'}, N {setup.num_samples}",
        f"levels: {', '.join(ran)}" + (f"; not run: {'; '.join(not_run)}" if not_run else ""),
        f"budget {budget.get('name', '')}: {attack.get('iterations')} iterations x "
        f"{attack.get('restarts', 1)} restarts; rounds of {rule.round_size} runs, up to "
        f"{rule.max_runs} per level",
    ]


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gradleak.audit.estimate import estimate, estimate_line, warn_ineffective
    from gradleak.audit.ladder import (
        check_user_attack_keys,
        load_ladder,
        read_setup,
        user_keys,
    )
    from gradleak.audit.run import AuditOptions
    from gradleak.config import load_config
    from gradleak.config_check import check_files
    from gradleak.runs.sweep import default_jobs

    check_files(load_config(args.config, args.overrides))  # paths and NAME, before any import
    setup = read_setup(args.config, args.overrides)
    warn_ineffective(setup, user_keys(args.config, args.overrides))
    ladder = load_ladder().for_setup(setup)
    check_user_attack_keys(ladder, setup)
    budget = {**ladder.budget(args.budget), "name": args.budget or ladder.default_budget}
    jobs = args.jobs or default_jobs()
    options = AuditOptions(out=Path("."), config=args.config, overrides=list(args.overrides),
                           budget=args.budget, seeds=args.seeds, max_seeds=args.max_seeds,
                           jobs=jobs)
    rule = options.rule(ladder, budget)
    for line in describe(setup, ladder, budget, rule):
        print(line)
    print(estimate_line(estimate(ladder, setup, budget, rule, jobs=jobs)))
    return 0
