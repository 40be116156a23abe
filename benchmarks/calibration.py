"""Reproduce the calibration of REFERENCE.md section 6 with gradleak's own pipeline.

For each setting: PSNR / SSIM / LPIPS of Inverting Gradients on one 32 px photo of the embedded
dataset, seconds per attack iteration, and the share of the update's energy (squared L2 norm)
held by the last layer, which tells how much of the gradient carries the label rather than the
image. Slow (minutes per row); run it by hand:

    .venv/bin/python benchmarks/calibration.py [--iterations 4000] [--only convnet-nobn ...]
"""

from __future__ import annotations

import argparse

import torch

from gradleak.config import load_config
from gradleak.runner import run_scenario

SETTINGS = {
    "convnet-nobn": ["model.name=convnet", "model.norm=none"],
    "convnet-nobn-w32": ["model.name=convnet", "model.norm=none", "model.width=32"],
    "convnet-bn-eval": ["model.name=convnet", "model.norm=batch", "client.bn_mode=eval"],
    "convnet-bn-train": ["model.name=convnet", "model.norm=batch", "client.bn_mode=train"],
    "mlp": ["model.name=mlp"],
    "resnet18": ["model.name=resnet18"],
    "convnet-nobn-fedavg-e8": ["model.name=convnet", "model.norm=none", "client.protocol=fedavg",
                               "client.local_epochs=8", "client.batch_size=1"],
}


def last_layer_share(update: dict[str, torch.Tensor]) -> float:
    energy = {k: float(v.pow(2).sum()) for k, v in update.items()}
    last = [k for k in update if update[k].ndim == 2][-1]
    prefix = last.rsplit(".", 1)[0]
    head = sum(e for k, e in energy.items() if k.startswith(prefix + "."))
    return head / sum(energy.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=4000)
    parser.add_argument("--only", nargs="*", default=list(SETTINGS))
    args = parser.parse_args()
    print(f"{'setting':24} {'psnr':>6} {'ssim':>6} {'lpips':>7} {'s/it':>7} {'last-layer energy':>18}")
    for name in args.only:
        cfg = load_config(None, [*SETTINGS[name], f"attack.iterations={args.iterations}"])
        run = run_scenario(cfg)
        m = run.result["metrics"]
        share = last_layer_share(run.update.tensors)
        lp = "null" if m["lpips"] is None else f"{m['lpips']:.3f}"
        per_it = run.result["attack_seconds"] / run.result["iterations"]
        print(f"{name:24} {m['psnr']:6.2f} {m['ssim']:6.3f} {lp:>7} {per_it:7.4f} {share:18.1%}",
              flush=True)


if __name__ == "__main__":
    main()
