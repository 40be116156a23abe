"""``gradleak privacy-utility``: defenses' privacy-utility trade-off in FL training (paper Sec. 6,
Fig. 11). The work lives in :mod:`gradleak.experiments.privacy_utility`.
"""

from __future__ import annotations

import argparse

import yaml

from gradleak.argtypes import int_at_least
from gradleak.errors import GradleakError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "privacy-utility", help="FL accuracy vs attack LPIPS for each defense and strength (Fig. 11)",
        description="For each defense and strength (paper App. C iii grids, plus no defense) train "
                    "the FL system (fl.* keys) with every client applying it, then attack the "
                    "victim's update at fl.attack_round. Writes OUT/privacy_utility.csv, "
                    "OUT/results.json and OUT/privacy_utility.png; rerunning skips finished rows.")
    p.add_argument("--config", help="YAML file with config sections")
    p.add_argument("--out", required=True, help="output folder (also the resume store)")
    p.add_argument("--defenses", default=None,
                   help="comma list, default qsgd,signsgd,topk,clip,gaussian (none always runs)")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                   help="replace one defense's strengths, e.g. topk=0.9,0.95 (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help="small defaults: skimage, MLP, 10 clients, 5 rounds, 300 attack iterations")
    p.add_argument("--save-checkpoints", action="store_true",
                   help="keep every round's global model in OUT/runs/<row>/round_XXX.pt")
    p.add_argument("--threads", type=int_at_least(1, 1024), default=None, metavar="N",
                   help="torch threads (default: torch's own; 1 with --quick, as tiny models only "
                        "lose to OpenMP spin-waiting on shared cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.set_defaults(func=run)


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["topk=0.9,0.95"]`` -> ``{"topk": [0.9, 0.95]}`` (values read as YAML scalars)."""
    grid: dict[str, list] = {}
    seen: set[str] = set()
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise GradleakError(f"bad --grid {item!r}: expected NAME=V1,V2, e.g. topk=0.9,0.95")
        parts = [v.strip() for v in values.split(",")]
        if any(not v for v in parts):
            raise GradleakError(f"bad --grid {item!r}: an empty strength; expected NAME=V1,V2, "
                                "e.g. topk=0.9,0.95")
        try:
            grid[name.strip()] = [yaml.safe_load(v) for v in parts]
        except yaml.YAMLError:
            raise GradleakError(f"bad --grid {item!r}: strengths must be numbers or words") from None
        if name.strip() in seen:
            raise GradleakError(f"bad --grid {item!r}: {name.strip()} is given twice")
        seen.add(name.strip())
    return grid


def run(args: argparse.Namespace) -> int:
    from gradleak.config import load_config
    from gradleak.defenses.grid import DEFAULT_DEFENSES, build_grid, point_config
    from gradleak.experiments.privacy_utility import (
        ACCURACY_DROP_LINE,
        QUICK,
        best_tradeoff,
        run_privacy_utility,
    )
    from gradleak.report.plots import save_png, tradeoff_figure

    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    if threads is not None:
        if threads < 1:
            raise GradleakError(f"bad value {threads} for --threads: must be >= 1")
        import torch

        torch.set_num_threads(threads)
    cfg = load_config(args.config, args.overrides, base=QUICK if args.quick else None)
    defenses = (tuple(d.strip() for d in args.defenses.split(",") if d.strip())
                if args.defenses else DEFAULT_DEFENSES)
    grid = build_grid(defenses, parse_grid(args.grid))
    for point in grid:  # every strength validated before the first (minutes-long) FL training
        point_config(cfg, point)
    result = run_privacy_utility(cfg, args.out, grid=grid, progress=not args.quiet,
                                 save_checkpoints=args.save_checkpoints,
                                 log=lambda m: print(m, flush=True))
    best = set(best_tradeoff(result.rows, cfg.metrics.lpips_threshold).values())
    fig = tradeoff_figure([{"defense": r["defense"], "label": r["value"], "lpips": r["lpips"],
                            "accuracy_drop": r["accuracy_drop"], "best": r["key"] in best}
                           for r in result.rows], lpips_threshold=cfg.metrics.lpips_threshold,
                          max_drop=ACCURACY_DROP_LINE)
    if fig is not None:
        save_png(fig, result.plot_path)
    print(f"{len(result.ran)} rows run, {len(result.skipped)} skipped, {len(result.failed)} failed "
          f"in {result.seconds:.1f} s")
    print(f"csv: {result.csv_path}\njson: {result.json_path}\nplot: {result.plot_path}\n"
          f"store: {result.json_path.parent / 'results.sqlite'} (gradleak report {args.out})")
    return 1 if result.failed else 0
