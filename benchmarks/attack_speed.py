"""Seconds per attack iteration vs seconds per plain training step, same model and batch.

An attack iteration needs the parameter gradient with ``create_graph=True`` and a second backward
to the images, so its floor is about 3-4x a training step. Prints medians (the machines are noisy).

    .venv/bin/python benchmarks/attack_speed.py [--repeats 20] [--batches 1 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from gradleak.attacks.losses import cosine_distance
from gradleak.attacks.priors import total_variation
from gradleak.attacks.simulate import dummy_gradient
from gradleak.config import ModelConfig
from gradleak.models import build_model

MODELS = {
    "mlp": ModelConfig(name="mlp"),
    "convnet (no BN)": ModelConfig(name="convnet", norm="none"),
    "convnet (BN)": ModelConfig(name="convnet", norm="batch"),
    "resnet18": ModelConfig(name="resnet18"),
}


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model: torch.nn.Module, batch: int, repeats: int) -> tuple[float, float]:
    """Median seconds of one training step and of one attack iteration at ``batch``."""
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01)
    x = torch.rand(batch, 3, 32, 32)
    y = torch.arange(batch) % 10
    target = [g.detach() for g in dummy_gradient(model, names, params, x, y)]
    dummy = torch.rand_like(x).requires_grad_(True)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    def attack_step() -> None:
        loss = cosine_distance(dummy_gradient(model, names, params, dummy, y), target)
        loss = loss + 1e-4 * total_variation(dummy)
        (grad,) = torch.autograd.grad(loss, dummy)
        with torch.no_grad():
            dummy.sub_(0.01 * grad.sign()).clamp_(0, 1)

    train = _median_seconds(train_step, repeats)
    model.load_state_dict(state)
    return train, _median_seconds(attack_step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'model':18} {'B':>3} {'train step s':>13} {'attack it s':>12} {'ratio':>6}")
    for label, cfg in MODELS.items():
        torch.manual_seed(0)
        model = build_model(cfg, num_classes=10, channels=3, resolution=32, mean=(0.5,) * 3,
                            std=(0.25,) * 3).eval()
        for batch in args.batches:
            train, attack = measure(model, batch, args.repeats)
            print(f"{label:18} {batch:>3} {train:>13.4f} {attack:>12.4f} {attack / train:>6.1f}")


if __name__ == "__main__":
    main()
