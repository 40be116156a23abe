"""``gradleak igsa``: Input-Gradient Smoothness Analysis of the configured model on the victim's
samples (paper Sec. 5.1, Eq. 10). The work lives in :mod:`gradleak.analysis.igsa`.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "igsa", help="IGSA smoothness of the model's input-gradient map (Sec. 5.1)",
        description="Build the configured model (model.checkpoint for a trained stage), take the "
                    "victim's samples (data.*) and write OUT/igsa.json with IGSA (higher = "
                    "smoother), per-sample values and per-layer sensitivities. "
                    "See docs/igsa.md for the formula.")
    p.add_argument("--config", help="YAML file with config sections")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--radius", type=float, default=None,
                   help="L2 radius of the ball in pixel space (default 0.25 * sqrt(C*H*W))")
    p.add_argument("--points", type=int, default=None, help="points M per sample (default 16)")
    p.add_argument("--absolute", action="store_true",
                   help="raw gradient differences instead of the normalised gradient direction")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gradleak.analysis.igsa import DEFAULT_POINTS, igsa
    from gradleak.analysis.theory import dimension_check
    from gradleak.config import load_config
    from gradleak.io import write_json
    from gradleak.provenance import versions
    from gradleak.scenario import Scenario

    cfg = load_config(args.config, args.overrides)
    sc = Scenario.from_config(cfg)
    model, images, labels, indices = sc.model, sc.images.to(sc.device), sc.labels, sc.indices
    result = igsa(model, images, labels, radius=args.radius,
                  num_points=args.points or DEFAULT_POINTS, seed=cfg.seed,
                  relative=not args.absolute)
    out = {
        "igsa": result.value,
        "model": cfg.model.name,
        "victim_indices": indices,
        "result": result.to_dict(),
        "dimension": dimension_check(model, len(labels), tuple(images.shape[1:])),
        "config": cfg.to_dict(),
        "config_digest": cfg.digest(),
        "versions": versions(),
        "seed": cfg.seed,
    }
    path = Path(args.out) / "igsa.json"
    write_json(path, out)
    print(f"igsa={result.value:.4g} ({cfg.model.name}, {len(labels)} samples, radius "
          f"{result.radius:.3g}, M={result.num_points})  ->  {path}")
    return 0
