"""``gradleak train-lm``: train the ``gpt2-tiny`` causal LM offline, for text attacks to audit.

Only the ``data.*`` keys of ``--config`` / ``key=value`` matter (default ``wordnet-examples``;
also ``wordnet`` glosses or ``data.dataset=text data.root=FILE``); it trains on their train split
and reports perplexity on the test split. The loop lives in :mod:`gradleak.models.train_lm`.
"""

from __future__ import annotations

import argparse

from gradleak.argtypes import finite_float, int_at_least
from gradleak.errors import GradleakError

DEFAULT_DATASET = "wordnet-examples"
_OWN_OPTIONS = {"data.max_length": "--max-length", "data.split": None}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-lm", help="train the gpt2-tiny causal LM on text (WordNet sentences by default)",
        description="Train gpt2-tiny (GPT-2 architecture on the WordNet BPE) as a causal LM on the "
                    "train split of a text dataset (data.* keys; default wordnet-examples). "
                    "Resumes automatically from OUT/train_state.pt; writes a Hugging Face model "
                    "directory for model.name=gpt2-tiny model.path=OUT, and OUT/training.json.")
    p.add_argument("--config", help="YAML file; only its data section is read")
    p.add_argument("--out", required=True, help="output folder (model directory, checkpoint)")
    p.add_argument("--steps", type=int_at_least(1, 10_000_000), default=2000,
                   help="total training steps (default 2000)")
    p.add_argument("--batch-size", type=int_at_least(1, 65_536), default=32)
    p.add_argument("--max-length", type=int_at_least(2, 128), default=48,
                   help="tokens per sentence, EOS included (default 48; gpt2-tiny has 128)")
    p.add_argument("--lr", type=finite_float(0.0, exclusive=True), default=1e-3,
                   help="AdamW peak learning rate (default 1e-3)")
    p.add_argument("--warmup", type=int_at_least(0), default=100,
                   help="linear warmup steps before the cosine decay (default 100)")
    p.add_argument("--hidden-size", type=int_at_least(8, 8192), default=256,
                   help="embedding width d (default 256; model.hidden_size)")
    p.add_argument("--layers", type=int_at_least(1, 64), default=2, help="transformer blocks")
    p.add_argument("--heads", type=int_at_least(1, 256), default=4,
                   help="attention heads; must divide --hidden-size")
    p.add_argument("--seed", type=int_at_least(0, 2**31 - 1), default=0,
                   help="initialisation and minibatch sampling")
    p.add_argument("--checkpoint-every", type=int_at_least(1), default=250, metavar="K")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint, start at 0")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="data.key=value", help="dataset overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gradleak.config import load_config
    from gradleak.config_values import data_overrides

    for key, _ in data_overrides("train-lm", args.overrides):
        if key in _OWN_OPTIONS:
            hint = (f"use {_OWN_OPTIONS[key]}" if _OWN_OPTIONS[key] else
                    "it always trains on the train split and evaluates on the test split")
            raise GradleakError(f"train-lm does not read {key}: {hint}")
    data = load_config(args.config, args.overrides, base={"data": {"dataset": DEFAULT_DATASET}}).data
    from gradleak.models.train_lm import LMTraining, train_lm

    settings = LMTraining(steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
                          lr=args.lr, warmup=args.warmup, hidden_size=args.hidden_size,
                          layers=args.layers, heads=args.heads, seed=args.seed,
                          checkpoint_every=args.checkpoint_every)
    settings.check()  # one line (e.g. heads not dividing the width) before any data is read
    result = train_lm(data, args.out, settings, fresh=args.fresh, progress=not args.quiet, log=print)
    report = result.report
    if result.step > result.start_step:
        print(f"trained steps {result.start_step}..{result.step} (loss {report['loss_first']:.3f} "
              f"-> {report['loss_final']:.3f}); {report['seconds']:.1f} s in all")
    ppl = report["heldout"]["perplexity"]
    print(f"held-out perplexity: {'n/a (no test sentences)' if ppl is None else f'{ppl:.1f}'} "
          f"({report['heldout']['sentences']} test sentences)")
    print(f"model: {result.out}\nuse: model.name=gpt2-tiny model.path={result.out}")
    return 0
