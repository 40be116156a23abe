"""``gradleak theory``: numerical checks of the paper's Sec. 4 theory on a fully connected network
(Lemma 4.1, Thm. 4.2, Thm. 4.3). The checks live in :mod:`gradleak.analysis.theory`; Thm. 4.2's
sweep over U is :mod:`gradleak.experiments.local_updates` (stored in OUT/results.sqlite, resumable).
"""

from __future__ import annotations

import argparse

from gradleak.argtypes import finite_float, int_at_least
from gradleak.errors import GradleakError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "theory", help="reconstruction error vs local updates U on an MLP (Thm. 4.2) + checks",
        description="Lemma 4.1: exact analytic reconstruction from one gradient. Thm. 4.2: attack "
                    "the model difference after U = 1..N full-batch local steps on an MLP with "
                    "N >= 2 samples; writes OUT/theory.csv, OUT/theory.png and OUT/theory.json "
                    "(with the Thm. 4.3 dimension check). Every run is stored in "
                    "OUT/results.sqlite as it finishes: a rerun (or a resumed, interrupted one) "
                    "skips the stored runs.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-updates", type=int_at_least(1, 10_000), default=8, help="largest U (default 8)")
    p.add_argument("--samples", type=int_at_least(1, 10_000), default=2, help="victim batch N (default 2)")
    p.add_argument("--lr", type=finite_float(0.0, exclusive=True), default=0.1,
                   help="client learning rate (default 0.1)")
    p.add_argument("--seeds", type=int_at_least(1, 10_000), default=1,
                   help="seeds averaged per U (default 1)")
    p.add_argument("--attacks", default="analytic,ig", help="comma list of analytic, ig")
    p.add_argument("--iterations", type=int_at_least(1, 10_000_000), default=200,
                   help="ig iterations (default 200)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides applied to every scenario, e.g. model.hidden=[128]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from gradleak.analysis.theory import MLP_SCENARIO, dimension_check, lemma41_check
    from gradleak.config import load_config
    from gradleak.experiments.local_updates import local_updates_plan, run_local_updates
    from gradleak.io import write_json
    from gradleak.provenance import versions
    from gradleak.scenario import Scenario

    for name, value in (("--max-updates", args.max_updates), ("--samples", args.samples),
                        ("--seeds", args.seeds), ("--iterations", args.iterations)):
        if value < 1:
            raise GradleakError(f"bad value {value} for {name}: must be >= 1")
    if args.samples < 2:
        print("note: with one sample the analytic ratio stays exact for any U; use --samples >= 2")
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = [a for a in attacks if a not in ("analytic", "ig")]
    if unknown or not attacks:
        raise GradleakError(f"bad value {args.attacks!r} for --attacks: a comma list of analytic, ig")
    out = Path(args.out)
    updates, seeds = range(1, args.max_updates + 1), range(args.seeds)
    settings = {"attacks": attacks, "samples": args.samples, "lr": args.lr, "seeds": seeds,
                "iterations": args.iterations, "overrides": args.overrides}
    local_updates_plan(updates, **settings)  # every run's config checked before any work
    lemma = lemma41_check(args.overrides)
    print(f"Lemma 4.1: analytic attack on one FedSGD gradient, max |error| = "
          f"{lemma['max_abs_error']:.2e} ({'exact' if lemma['exact'] else 'NOT exact'})")
    cfg = load_config(None, [*MLP_SCENARIO, f"data.num_samples={args.samples}", *args.overrides])
    sc = Scenario.from_config(cfg)
    dims = dimension_check(sc.model, args.samples, tuple(sc.images.shape[1:]))
    print(f"Thm. 4.3: {dims['message']}")
    swept = run_local_updates(out, updates, **settings, progress=sys.stderr.isatty(),
                              log=lambda m: print(m, flush=True))
    rows = swept.rows
    write_json(out / "theory.json", {
        "lemma_4_1": lemma, "theorem_4_3": dims, "theorem_4_2": rows,
        "settings": {"samples": args.samples, "lr": args.lr, "seeds": args.seeds,
                     "attacks": attacks, "iterations": args.iterations,
                     "scenario": [*MLP_SCENARIO, *args.overrides]},
        "store": "results.sqlite", "versions": versions(),
    })
    print(f"csv: {out / 'theory.csv'}\nplot: {out / 'theory.png'}\njson: {out / 'theory.json'}\n"
          f"store: {out / 'results.sqlite'} ({len(swept.ran)} runs done, {len(swept.skipped)} "
          "already stored)")
    return 0
