"""WST (the server replays the client's optimiser) against BST (one-gradient approximation).

A FedAvg client that trains with Adam (or SGD with momentum) shares a model difference that is
far from a scaled gradient: Adam's first step is about -lr * sign(g). BST treats the negated
delta as a gradient; WST (``threat.knows_client_config=true``) replays the client's optimiser
differentiably. For each setting and seed both attacks run on the same victim, model and update;
the script prints per-seed PSNR / LPIPS and the means. Slow-ish (a minute or two per run on one
CPU core at the defaults); run it by hand:

    PYTHONPATH=src python benchmarks/wst_optimizers.py [--seeds 0 1 2] [--iterations 600]
        [--only adam]
"""

from __future__ import annotations

import argparse
import statistics

from gradleak.config import load_config
from gradleak.runner import run_scenario

BASE = ["data.dataset=skimage", "data.resolution=16", "data.num_samples=2",
        "model.name=convnet", "model.width=16", "model.norm=none",
        "client.protocol=fedavg", "client.local_epochs=2", "client.batch_size=1",
        "attack.name=ig", "attack.tv=1e-4", "attack.restarts=1"]
SETTINGS = {
    "adam": ["client.optimizer=adam", "client.lr=0.001"],
    "sgd-momentum": ["client.optimizer=sgd", "client.momentum=0.9", "client.lr=0.05"],
}


def run(setting: str, seed: int, iterations: int, wst: bool) -> dict[str, float]:
    cfg = load_config(None, [*BASE, *SETTINGS[setting], f"seed={seed}",
                             f"attack.iterations={iterations}",
                             f"threat.knows_client_config={str(wst).lower()}"])
    result = run_scenario(cfg).result
    return {"psnr": result["metrics"]["psnr"], "lpips": result["metrics"]["lpips"],
            "seconds": result["attack_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--only", nargs="*", default=list(SETTINGS))
    args = parser.parse_args()
    print(f"{'setting':14} {'seed':>4} {'attack':>6} {'psnr':>7} {'lpips':>7} {'s':>6}")
    for setting in args.only:
        rows: dict[str, list[dict[str, float]]] = {"BST": [], "WST": []}
        for seed in args.seeds:
            for name, wst in (("BST", False), ("WST", True)):
                r = run(setting, seed, args.iterations, wst)
                rows[name].append(r)
                lp = "null" if r["lpips"] is None else f"{r['lpips']:.3f}"
                print(f"{setting:14} {seed:4d} {name:>6} {r['psnr']:7.2f} {lp:>7} "
                      f"{r['seconds']:6.1f}", flush=True)
        for name, rs in rows.items():
            lps = [r["lpips"] for r in rs if r["lpips"] is not None]
            lp = f"{statistics.mean(lps):.3f}" if lps else "null"
            print(f"{setting:14} mean {name:>6} {statistics.mean(r['psnr'] for r in rs):7.2f} "
                  f"{lp:>7}", flush=True)


if __name__ == "__main__":
    main()
