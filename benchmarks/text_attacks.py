"""Seconds per batch of the exact text attacks (DAGER, token-set) on CPU, with their quality.

Each case is the one ``Scenario`` pipeline (client round, attack, scoring), built for a batch of
B sentences and run ``--repeats`` times on distinct victims (seeds); the attack's own time
(``attack_seconds``, without the client round and scoring) is reported as a median with its
range, next to ROUGE-1 and exact recovery (or token recall for the bag). Run with nothing else
on the machine, and say how many cores it had.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/text_attacks.py [--batches 1 4 8 16]
        [--repeats 3] [--models gpt2-tiny minilm] [--attacks dager token-set]

``--local-steps 1 2 4 8`` instead measures DAGER's FedAvg variant: the client trains U local
epochs of SGD (``client.lr``, ``client.local_epochs=U``; one full batch of B sentences per step,
or ``--client-batch b`` mini-batches) and shares the model delta; the server knows the client's
configuration (level 3).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from gradleak.config import load_config
from gradleak.scenario import Scenario

DATA = {"gpt2-tiny": "personal", "minilm": "wordnet"}


def run_case(model: str, attack: str, batch: int, seed: int, max_length: int,
             extra: tuple[str, ...] = ()) -> dict:
    cfg = load_config(None, [f"model.name={model}", f"data.dataset={DATA[model]}",
                             f"attack.name={attack}", f"data.num_samples={batch}",
                             f"data.max_length={max_length}", "data.split=test",
                             "data.distinct_labels=false", f"seed={seed}", *extra])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        out = Scenario.from_config(cfg).run()
    m = out.result["metrics"]
    return {"attack_s": out.result["attack_seconds"], "total_s": time.perf_counter() - started,
            "rouge1": m.get("rouge1"), "exact": m.get("exact"),
            "token_recall": m.get("token_recall"),
            "feasible": out.result["attack_details"].get("feasible")}


def _median(values: list) -> str:
    vals = [v for v in values if v is not None]
    return f"{statistics.median(vals):.3f}" if vals else "null"


def _feasible(rows: list[dict]) -> str:
    known = [r["feasible"] for r in rows if r["feasible"] is not None]
    return f"{sum(known)}/{len(known)}" if known else "n/a (zero-rows rule)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=list(DATA), choices=list(DATA))
    ap.add_argument("--attacks", nargs="+", default=["dager", "token-set"])
    ap.add_argument("--max-length", type=int, default=16)
    ap.add_argument("--local-steps", type=int, nargs="+", help="FedAvg: U values (DAGER)")
    ap.add_argument("--lr", type=float, default=0.01, help="FedAvg: the client's SGD lr")
    ap.add_argument("--client-batch", type=int, help="FedAvg: local mini-batch size (default B)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, L = {args.max_length}")
    if args.local_steps:
        fedavg(args)
        return
    print("| model | attack | B | attack s (median, min-max) | total s | ROUGE-1 | exact | "
          "token recall | feasible |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models:
        for attack in args.attacks:
            for b in args.batches:
                rows = [run_case(model, attack, b, seed, args.max_length)
                        for seed in range(args.repeats)]
                att = [r["attack_s"] for r in rows]
                print(f"| {model} | {attack} | {b} | {statistics.median(att):.2f} "
                      f"({min(att):.2f}-{max(att):.2f}) | {_median([r['total_s'] for r in rows])} "
                      f"| {_median([r['rouge1'] for r in rows])} | "
                      f"{_median([r['exact'] for r in rows])} | "
                      f"{_median([r['token_recall'] for r in rows])} | "
                      f"{_feasible(rows)} |", flush=True)


def fedavg(args: argparse.Namespace) -> None:
    print(f"FedAvg, SGD lr {args.lr}, local mini-batches of {args.client_batch or 'B'}, "
          "server knows the client")
    print("| model | B | epochs | attack s (median) | ROUGE-1 (median, min) | exact (median) |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        for b in args.batches:
            for u in args.local_steps:
                extra = ("client.protocol=fedavg", f"client.local_epochs={u}",
                         f"client.batch_size={args.client_batch or b}", f"client.lr={args.lr}",
                         "threat.knows_client_config=true")
                rows = [run_case(model, "dager", b, seed, args.max_length, extra)
                        for seed in range(args.repeats)]
                r1 = [r["rouge1"] for r in rows if r["rouge1"] is not None]
                print(f"| {model} | {b} | {u} | {_median([r['attack_s'] for r in rows])} | "
                      f"{_median(r1)} ({min(r1) if r1 else float('nan'):.3f}) | "
                      f"{_median([r['exact'] for r in rows])} |", flush=True)


if __name__ == "__main__":
    main()
