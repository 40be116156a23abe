"""``gradleak theory``: numerical checks of the paper's Sec. 4 theory on a fully connected network
(Lemma 4.1, Thm. 4.2, Thm. 4.3). The work lives in :mod:`gradleak.analysis.theory`.
"""

from __future__ import annotations

import argparse

from gradleak.errors import GradleakError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "theory", help="reconstruction error vs local updates U on an MLP (Thm. 4.2) + checks",
        description="Lemma 4.1: exact analytic reconstruction from one gradient. Thm. 4.2: attack "
                    "the model difference after U = 1..N full-batch local steps on an MLP with "
                    "N >= 2 samples; writes OUT/theory.csv, OUT/theory.png and OUT/theory.json "
                    "(with the Thm. 4.3 dimension check).")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-updates", type=int, default=8, help="largest U (default 8)")
    p.add_argument("--samples", type=int, default=2, help="victim batch N (default 2)")
    p.add_argument("--lr", type=float, default=0.1, help="client learning rate (default 0.1)")
    p.add_argument("--seeds", type=int, default=1, help="seeds averaged per U (default 1)")
    p.add_argument("--attacks", default="analytic,ig", help="comma list of analytic, ig")
    p.add_argument("--iterations", type=int, default=200, help="ig iterations (default 200)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides applied to every scenario, e.g. model.hidden=[128]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gradleak.analysis.theory import (
        MLP_SCENARIO,
        dimension_check,
        lemma41_check,
        local_updates_sweep,
        plot_local_updates,
        write_local_updates_csv,
    )
    from gradleak.config import load_config
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
    out = Path(args.out)
    lemma = lemma41_check(args.overrides)
    print(f"Lemma 4.1: analytic attack on one FedSGD gradient, max |error| = "
          f"{lemma['max_abs_error']:.2e} ({'exact' if lemma['exact'] else 'NOT exact'})")
    cfg = load_config(None, [*MLP_SCENARIO, f"data.num_samples={args.samples}", *args.overrides])
    sc = Scenario.from_config(cfg)
    dims = dimension_check(sc.model, args.samples, tuple(sc.images.shape[1:]))
    print(f"Thm. 4.3: {dims['message']}")
    rows = []
    for attack in attacks:
        rows += local_updates_sweep(range(1, args.max_updates + 1), attack=attack,
                                    samples=args.samples, lr=args.lr, seeds=range(args.seeds),
                                    iterations=args.iterations, overrides=args.overrides,
                                    log=lambda m: print(m, flush=True))
    write_local_updates_csv(out / "theory.csv", rows)
    plot_local_updates(out / "theory.png", rows)
    write_json(out / "theory.json", {
        "lemma_4_1": lemma, "theorem_4_3": dims, "theorem_4_2": rows,
        "settings": {"samples": args.samples, "lr": args.lr, "seeds": args.seeds,
                     "attacks": attacks, "iterations": args.iterations,
                     "scenario": [*MLP_SCENARIO, *args.overrides]},
        "versions": versions(),
    })
    print(f"csv: {out / 'theory.csv'}\nplot: {out / 'theory.png'}\njson: {out / 'theory.json'}")
    return 0
