"""Regression check: the same fixed scenarios on the current tree and on a reference commit.

    .venv/bin/python benchmarks/regression.py --ref d1f815c [--iterations 60] [--json out.json]

Runs, in one go and in two subprocesses (one per source tree, ``PYTHONPATH`` pointing at it, one
thread each): the demo audit's four scenarios, seed 0 of the ``tab1`` and ``tab2`` quick grids
(GIA-O variants), seed 0 of the ``fig11`` quick grid (FL training + attack per defense), a GIAS
run and a GGL run on a small generator trained in the run, and the demo's WST scenario. Attack
budgets are cut to ``--iterations`` so the whole check takes minutes: the point is equality, not
quality. Prints one line per scenario with every metric that differs (absolute difference) and
exits 1 when any does. Only public entry points that exist on both trees are used
(``runner.run_scenario``, ``experiments.catalog.make_plan``, ``runs.worker.execute``,
``runs.artifacts.ensure_generator``, or their places before the ``runs`` package).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("psnr", "ssim", "lpips", "mse", "brr", "wsrr", "label_accuracy", "final_accuracy")
DEMO = ["data.dataset=skimage", "data.resolution=32", "model.name=convnet", "model.width=32",
        "model.depth=3", "model.norm=none", "attack.name=ig", "attack.tv=1e-4", "attack.labels=known"]
DEMO_SETS = {
    "demo-fedsgd": ["client.protocol=fedsgd"],
    "demo-fedavg-bst": ["client.protocol=fedavg", "client.local_epochs=4", "client.batch_size=1"],
    "demo-fedavg-wst": ["client.protocol=fedavg", "client.local_epochs=4", "client.batch_size=1",
                        "threat.knows_client_config=true"],
    "demo-fedsgd-batch4": ["client.protocol=fedsgd", "data.num_samples=4"],
}
SMALL = ["model.name=mlp", "model.hidden=[64]", "data.resolution=16"]


def _scenarios(its: int, tmp: Path) -> dict[str, dict]:
    """name -> metrics, computed on the tree this process imports."""
    from gradleak.config import load_config
    try:  # the runs package (issue 22) ...
        from gradleak.experiments.catalog import make_plan
        from gradleak.runs.artifacts import ensure_generator
        from gradleak.runs.worker import execute
    except ImportError:  # ... or trees before it
        from gradleak.experiments.artifacts import ensure_generator
        from gradleak.experiments.spec import make_plan
        from gradleak.experiments.worker import execute
    from gradleak.runner import run_scenario

    out: dict[str, dict] = {}
    for name, sets in DEMO_SETS.items():
        m = run_scenario(load_config(None, [*DEMO, *sets, f"attack.iterations={its}"])).result
        out[name] = m["metrics"]
    for exp, keep in (("tab1", "GIA-O"), ("tab2", "O-"), ("fig11", "")):
        overrides = [f"attack.iterations={its}"] + (["fl.rounds=3"] if exp == "fig11" else [])
        plan = make_plan(exp, "quick", overrides)
        for run in plan.runs:
            if run.seed != 0 or not run.variant.startswith(keep):
                continue
            row = execute(run.to_dict(), str(tmp / exp), profile="quick", threads=1)
            label = f"{exp}:{run.variant}:{json.dumps(run.labels, sort_keys=True)}"
            out[label] = {k: row.get(k) for k in METRICS} | {"status": row["status"]}
    gen = ensure_generator("g", {"data": {"dataset": "skimage", "split": "train"}, "steps": 30,
                                 "batch_size": 8}, tmp / "cache", resolution=16)
    for name, extra in (("gias", ["attack.latent_iterations=20", "attack.generator_iterations=10"]),
                        ("ggl", ["attack.ggl_budget=60", "attack.labels=known"])):
        cfg = load_config(None, [*SMALL, f"attack.name={name}", f"attack.generator={gen}",
                                 "threat.knows_data_distribution=true", *extra])
        out[name] = run_scenario(cfg).result["metrics"]
    return out


def _worker(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = _scenarios(args.iterations, Path(tmp))
    Path(args.worker).write_text(json.dumps(result, sort_keys=True))
    return 0


def _run_tree(src: Path, iterations: int, dest: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, __file__, "--worker", str(dest), "--iterations",
                    str(iterations)], env=env, check=True, cwd=src.parent)
    return json.loads(dest.read_text())


def _export(ref: str, into: Path) -> Path:
    """``git archive`` of ``ref`` unpacked into ``into``; returns its ``src`` folder."""
    tar = into / "ref.tar"
    with tar.open("wb") as f:
        subprocess.run(["git", "archive", ref], cwd=ROOT, stdout=f, check=True)
    with tarfile.open(tar) as t:
        t.extractall(into / "tree", filter="data")
    return into / "tree" / "src"


def _differences(a: dict, b: dict) -> list[str]:
    diffs = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)):
            continue
        if isinstance(x, int | float) and isinstance(y, int | float):
            diffs.append(f"{key} {x:.6g} vs {y:.6g} (|d| {abs(x - y):.3g})")
        else:
            diffs.append(f"{key} {x!r} vs {y!r}")
    return diffs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", default="HEAD~1", help="reference commit (default HEAD~1)")
    p.add_argument("--iterations", type=int, default=60, help="attack iterations per run")
    p.add_argument("--json", help="write both trees' metrics here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return _worker(args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref = _run_tree(_export(args.ref, tmp), args.iterations, tmp / "ref.json")
        cur = _run_tree(ROOT / "src", args.iterations, tmp / "cur.json")
    if args.json:
        Path(args.json).write_text(json.dumps({"ref": ref, "current": cur}, indent=1, sort_keys=True))
    changed = 0
    for name in sorted(set(ref) | set(cur)):
        diffs = _differences(ref.get(name, {}), cur.get(name, {}))
        changed += bool(diffs)
        print(f"{name:<60} {'identical' if not diffs else '; '.join(diffs)}")
    print(f"{len(set(ref) | set(cur))} scenarios, {changed} with differences (ref {args.ref})")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
