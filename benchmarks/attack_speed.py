"""Seconds per attack iteration vs seconds per plain training step, same model and batch.

An attack iteration needs the parameter gradient with ``create_graph=True`` and a second backward
to the images, so its floor is about 3-4x a training step. The attack iteration is the GIA-O
engine's own step (Inverting Gradients: cosine distance, TV, signed Adam, box), taken through
:class:`gradleak.attacks.restart.Restart`. Training steps and attack iterations are interleaved
and their medians reported (the machines are noisy).

    .venv/bin/python benchmarks/attack_speed.py [--repeats 20] [--batches 1 8]

``--restarts R`` instead times whole R-restart attacks with ``attack.batch_restarts`` off and on
(interleaved medians), the measurement behind ``batch_restarts=auto`` (batched on CUDA only).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from gradleak.attacks import build_attack, lowrank, observe
from gradleak.attacks.restart import Restart
from gradleak.config import AttackConfig, ClientConfig, ModelConfig, ThreatConfig
from gradleak.fl.client import ClientSetup, client_update
from gradleak.models import build_model
from gradleak.threat import ThreatModel

MODELS = {
    "mlp": ModelConfig(name="mlp"),
    "convnet (no BN)": ModelConfig(name="convnet", norm="none"),
    "convnet (BN)": ModelConfig(name="convnet", norm="batch"),
    "resnet18": ModelConfig(name="resnet18"),
}


def engine_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    """One GIA-O engine iteration (Inverting Gradients defaults) on the update of ``(x, y)``."""
    setup = ClientSetup.from_config(ClientConfig(), len(y))
    update = client_update(model, x, y, setup, seed=0)
    obs = observe(model=model, update=update, threat=ThreatModel.from_config(ThreatConfig()),
                  setup=setup, labels=y, input_shape=tuple(x.shape[1:]), num_classes=10)
    attack = build_attack(AttackConfig(name="ig", iterations=10 ** 6))
    match = attack.matching_setup(obs)
    ctx = attack.context(match, obs, y, None)
    step = Restart(ctx, torch.Generator().manual_seed(0)).stepper()
    return lambda: step(0)


def measure(model: torch.nn.Module, batch: int, repeats: int) -> tuple[float, float]:
    """Median seconds of one training step and of one attack iteration at ``batch``,
    measured alternately."""
    x = torch.rand(batch, 3, 32, 32)
    y = torch.arange(batch) % 10
    attack_step = engine_step(model, x, y)
    trained = copy.deepcopy(model)
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.01)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(trained(x), y).backward()
        optimizer.step()

    train_step(), attack_step()  # warm-up
    train, attack = [], []
    for _ in range(repeats):
        for fn, times in ((train_step, train), (attack_step, attack)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(train), statistics.median(attack)


def restart_batching(model: torch.nn.Module, batch: int, restarts: int, iterations: int,
                     repeats: int) -> dict[str, float]:
    """Median seconds of a whole ``restarts``-restart attack with ``attack.batch_restarts`` off
    (one after another, autograd) and on (one vmapped functional problem), interleaved."""
    x, y = torch.rand(batch, 3, 32, 32), torch.arange(batch) % 10
    setup = ClientSetup.from_config(ClientConfig(), batch)
    obs = observe(model=model, update=client_update(model, x, y, setup, seed=0),
                  threat=ThreatModel.from_config(ThreatConfig()), setup=setup, labels=y,
                  input_shape=(3, 32, 32), num_classes=10)
    times: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(repeats + 1):
        for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
            attack = build_attack(AttackConfig(name="ig", iterations=iterations, restarts=restarts,
                                               batch_restarts=mode))
            start = time.perf_counter()
            attack(obs, seed=0)
            if r > 0:  # the first round warms both paths up
                times[mode].append(time.perf_counter() - start)
    return {mode: statistics.median(t) for mode, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--dense", action="store_true",
                        help="never factor linear-layer gradients (the engine before lowrank.py)")
    parser.add_argument("--restarts", type=int, default=0,
                        help="instead: time whole attacks with this many restarts, batched or not")
    parser.add_argument("--iterations", type=int, default=20, help="with --restarts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.restarts:
        print(f"{'model':18} {'B':>3} {'R':>3} {'sequential s':>13} {'batched s':>10} {'ratio':>6}")
        for label in args.models:
            torch.manual_seed(0)
            model = build_model(MODELS[label], num_classes=10, channels=3, resolution=32,
                                mean=(0.5,) * 3, std=(0.25,) * 3).eval()
            for batch in args.batches:
                t = restart_batching(model, batch, args.restarts, args.iterations, args.repeats)
                print(f"{label:18} {batch:>3} {args.restarts:>3} {t['off']:>13.3f} {t['on']:>10.3f} "
                      f"{t['on'] / t['off']:>6.2f}", flush=True)
        return
    if args.dense:
        lowrank.MIN_WEIGHTS = float("inf")
    print(f"{'model':18} {'B':>3} {'train step s':>13} {'attack it s':>12} {'ratio':>6}")
    for label in args.models:
        cfg = MODELS[label]
        torch.manual_seed(0)
        model = build_model(cfg, num_classes=10, channels=3, resolution=32, mean=(0.5,) * 3,
                            std=(0.25,) * 3).eval()
        for batch in args.batches:
            train, attack = measure(model, batch, args.repeats)
            print(f"{label:18} {batch:>3} {train:>13.4f} {attack:>12.4f} {attack / train:>6.1f}")


if __name__ == "__main__":
    main()
