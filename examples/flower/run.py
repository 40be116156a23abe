"""Run the example offline with Flower's simulation engine and print what gradleak saw.

    OMP_NUM_THREADS=1 python examples/flower/run.py [--rounds 4] [--out reports/flower-example]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# The simulation's workers import client_app/task by name: give them this folder too.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH"))
                                           if p)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import client_app  # noqa: E402
import server_app  # noqa: E402
import task  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", default="reports/flower-example")
    parser.add_argument("--cpus", type=int, default=2, help="parallel client workers")
    args = parser.parse_args()
    started, summary = time.perf_counter(), []
    run_simulation(
        server_app=server_app.make_app(args.out, args.rounds, summary),
        client_app=client_app.app, num_supernodes=task.NUM_CLIENTS,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": args.cpus, "include_dashboard": False}})
    if not summary:
        raise SystemExit("the simulation did not finish; see the log above")
    (res,) = summary
    print(f"\n{task.NUM_CLIENTS} clients, {args.rounds} rounds, {time.perf_counter() - started:.0f} s")
    with sqlite3.connect(Path(args.out) / "results.sqlite") as db:
        withheld = dict(db.execute("SELECT round, count(*) FROM runs WHERE status = 'withheld' "
                                   "AND flower_run = (SELECT max(flower_run) FROM runs) GROUP BY round"))
    for rnd, m in sorted(res["train"].items()):
        print(f"round {rnd}: guard (mean over sent updates) psnr before {m['gradleak-psnr-initial']:.1f}"
              f" dB -> sent {m['gradleak-psnr']:.1f} dB, fallback used by {m['gradleak-fallback']:.0%}"
              f"; {withheld.get(rnd, 0)} of {task.NUM_CLIENTS} updates withheld")
    for r in res["records"]:
        if "error" in r:
            print(f"audit round {r['round']} {r['client']}: failed: {r['error']}")
            continue
        # The leak rate is unknown (None) without LPIPS weights: the leak criterion needs them.
        leak = "n/a" if r.get("leak_rate") is None else f"{r['leak_rate']:.2f}"
        print(f"audit round {r['round']} {r['client']}: psnr {r['psnr']:.1f} dB, "
              f"leak rate {leak}, attack loss {r['attack_loss']:.3f}")
    acc = res["accuracy"]
    print(f"test accuracy: {acc[0]['accuracy']:.3f} -> {acc[max(acc)]['accuracy']:.3f}")
    print(f"results: {args.out}/results.sqlite and {args.out}/*/round_*/*.png")


if __name__ == "__main__":
    main()
