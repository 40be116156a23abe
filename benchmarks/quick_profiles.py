"""Wall time of each experiment's ``quick`` profile against its 30-minute budget (2 CPU cores).

Runs every named experiment (or those given) from scratch into its own folder, with the given
number of jobs, and prints the wall time, the number of ok/failed runs and whether it met the
budget. A folder that already holds finished runs resumes, so pass a fresh ``--out`` to time
cold runs (generators and FL trainings included).

    .venv/bin/python benchmarks/quick_profiles.py --out /tmp/quick [--jobs 2] [tab1 fig4 ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gradleak.experiments.catalog import experiment_names, make_plan
from gradleak.runs.sweep import run_sweep

BUDGET_S = 30 * 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="experiments (default: all)")
    ap.add_argument("--out", required=True, help="parent folder; one sweep folder per experiment")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    rows = []
    for name in args.names or experiment_names():
        plan = make_plan(name, "quick")
        start = time.perf_counter()
        res = run_sweep(plan, Path(args.out) / name, jobs=args.jobs, progress=True)
        wall = time.perf_counter() - start
        rows.append((name, len(plan.runs), len(res.ok), len(res.failed), len(res.skipped), wall))
        print(f"{name}: {wall / 60:.1f} min", flush=True)
    print(f"\n{'experiment':<10} {'runs':>5} {'ok':>4} {'failed':>6} {'resumed':>7} {'minutes':>8}  budget")
    for name, total, ok, failed, skipped, wall in rows:
        verdict = "ok" if wall <= BUDGET_S else "OVER"
        print(f"{name:<10} {total:>5} {ok:>4} {failed:>6} {skipped:>7} {wall / 60:>8.1f}  {verdict}")


if __name__ == "__main__":
    main()
