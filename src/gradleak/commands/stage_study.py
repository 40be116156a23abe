"""``gradleak stage-study``: accuracy, IGSA and attack PSNR along FL training (paper Fig. 7)."""

from __future__ import annotations

import argparse

from gradleak.config import load_config

QUICK = ["fl.clients=10", "fl.fraction=0.5", "fl.rounds=6", "client.protocol=fedavg",
         "client.local_epochs=1", "client.batch_size=16", "model.name=mlp", "model.hidden=[128]",
         "attack.iterations=300"]


def run(args: argparse.Namespace) -> int:
    import torch

    from gradleak.experiments.stage_study import stage_study
    from gradleak.report.plots import save_png, stage_figure

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, (QUICK if args.quick else []) + list(args.overrides))
    rows = stage_study(cfg, args.out, every=args.every, igsa_points=args.igsa_points,
                       progress=not args.quiet, log=lambda m: print(m, flush=True))
    save_png(stage_figure(rows, title=cfg.model.name), f"{args.out}/stage_study.png", dpi=110)
    for r in rows:
        print(f"round {r['round']:>3}  accuracy {float(r['accuracy']):.3f}  IGSA {float(r['igsa']):.3g}"
              f"  PSNR {float(r['psnr']):.2f} dB")
    print(f"wrote {args.out}/stage_study.csv and stage_study.png")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("stage-study", help="accuracy, IGSA and attack PSNR every k FL rounds",
                              description=__doc__)
    p.add_argument("--config", help="YAML file with config sections")
    p.add_argument("--out", required=True, help="output folder (also the resume store)")
    p.add_argument("--every", type=int, default=1, help="record every k rounds")
    p.add_argument("--igsa-points", type=int, default=8, help="IGSA points per sample")
    p.add_argument("--quick", action="store_true", help="CPU-sized defaults: " + " ".join(QUICK))
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids OpenMP stalls)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=run)
