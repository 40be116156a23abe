"""MixUp / InstaHide against the non-adaptive attack (``ig``) and GradAttack's (``mix-decode``).

The docs/defenses.md table: the default MLP (768-512-256-10), 16 px, 4 skimage photos, FedSGD, TV 1e-4, the
labels known; ``mix-decode`` is granted the mixing plan (``threat.knows_mixing``). Prints PSNR
and LPIPS per seed and their means.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mixing.py --mix mixup --iterations 1000 \
        --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import statistics
import warnings

from gradleak.config import load_config
from gradleak.scenario import Scenario

CASE = ["model.name=mlp", "data.resolution=16", "data.num_samples=4",
        "attack.tv=1e-4", "threat.knows_mixing=true"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mix", choices=("mixup", "instahide"), default="mixup")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--attacks", nargs="+", default=["ig", "mix-decode"])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for attack in args.attacks:
        psnr, lpips = [], []
        for seed in args.seeds:
            cfg = load_config(None, [*CASE, f"client.mix={args.mix}", f"attack.name={attack}",
                                     f"attack.iterations={args.iterations}", f"seed={seed}"])
            m = Scenario.from_config(cfg).run().result["metrics"]
            psnr.append(m["psnr"])
            lpips.append(m["lpips"])
            print(f"{args.mix} {attack} seed {seed}: PSNR {m['psnr']:.2f} LPIPS {m['lpips']:.3f}",
                  flush=True)
        print(f"{args.mix} {attack}: mean PSNR {statistics.mean(psnr):.2f} "
              f"LPIPS {statistics.mean(lpips):.3f} over seeds {args.seeds}", flush=True)


if __name__ == "__main__":
    main()
