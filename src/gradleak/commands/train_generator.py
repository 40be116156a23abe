"""``gradleak train-generator``: train the DCGAN prior of the GIA-L attacks on auxiliary data.

Only the ``data.*`` keys of ``--config`` / ``key=value`` matter (default: ``skimage``, train
split, 32 px). The loop lives in :mod:`gradleak.generative.train`.
"""

from __future__ import annotations

import argparse

from gradleak.argtypes import finite_float, int_at_least


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-generator", help="train a DCGAN on auxiliary data for the gias/ggl attacks",
        description="Train a DCGAN generator on the adversary's auxiliary data (data.* keys). "
                    "Resumes automatically from OUT/checkpoint.pt; writes OUT/generator.pt for "
                    "attack.generator=OUT/generator.pt.")
    p.add_argument("--config", help="YAML file; only its data section is read")
    p.add_argument("--out", required=True, help="output folder (checkpoint, generator.pt, samples.png)")
    p.add_argument("--steps", type=int_at_least(1, 10_000_000), default=3000,
                   help="total training steps (default 3000)")
    p.add_argument("--batch-size", type=int_at_least(1, 65_536), default=64)
    p.add_argument("--latent-dim", type=int_at_least(1, 8192), default=128)
    p.add_argument("--width", type=int_at_least(1, 2048), default=32, help="base channel count of G and D")
    p.add_argument("--lr", type=finite_float(0.0, exclusive=True), default=2e-4,
                   help="Adam lr, betas (0.5, 0.999)")
    p.add_argument("--conditional", action="store_true", help="class-conditional G and D (for ggl)")
    p.add_argument("--seed", type=int_at_least(0, 2**31 - 1), default=0)
    p.add_argument("--no-augment", action="store_true", help="no DiffAugment (not advised on small data)")
    p.add_argument("--checkpoint-every", type=int_at_least(1), default=250, metavar="K")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint, start at 0")
    p.add_argument("--device", default="cpu", help="where G and D train: cpu (default), cuda or "
                   "cuda:N (random draws stay on the CPU generator)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="data.key=value", help="dataset overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gradleak.config import load_config
    from gradleak.config_values import data_overrides
    from gradleak.generative.train import GeneratorTraining, train_generator

    data_overrides("train-generator", args.overrides)
    data = load_config(args.config, args.overrides).data
    from gradleak.scenario import resolve_device

    device = resolve_device(args.device)  # one line, before any data is loaded
    settings = GeneratorTraining(steps=args.steps, batch_size=args.batch_size,
                                 latent_dim=args.latent_dim, width=args.width,
                                 conditional=args.conditional, lr=args.lr, seed=args.seed,
                                 checkpoint_every=args.checkpoint_every, augment=not args.no_augment)
    result = train_generator(data, args.out, settings, fresh=args.fresh, progress=not args.quiet,
                             device=str(device), log=print)
    if result.did_work:
        print(f"trained steps {result.start_step}..{result.step} in {result.seconds:.1f} s "
              f"(loss_d={result.loss_d:.3f} loss_g={result.loss_g:.3f})")
    print(f"generator: {result.generator_path}  samples: {result.samples_path}\n"
          f"use: attack.generator={result.generator_path}")
    return 0
