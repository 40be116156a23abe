"""Run the text example offline with Flower's simulation engine and print what gradleak saw.

    OMP_NUM_THREADS=1 python examples/flower_text/run.py [--clients 3] [--rounds 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="reports/flower-text-example")
    parser.add_argument("--cpus", type=int, default=2, help="parallel client workers")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.rounds < 1:
        parser.error("--clients and --rounds must be >= 1")
    # The simulation's workers import client_app/task by name and read these: set them first.
    os.environ["EXAMPLE_CLIENTS"] = str(args.clients)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH"))
                                               if p)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(HERE))
    import client_app
    import server_app
    import task
    from flwr.simulation import run_simulation

    started, summary = time.perf_counter(), []
    run_simulation(
        server_app=server_app.make_app(args.out, args.rounds, summary),
        client_app=client_app.app, num_supernodes=task.NUM_CLIENTS,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": args.cpus, "include_dashboard": False}})
    if not summary:
        raise SystemExit("the simulation did not finish; see the log above")
    (res,) = summary
    print(f"\n{task.NUM_CLIENTS} clients, {args.rounds} rounds, defense {client_app.NAME} "
          f"{client_app.PARAMS}, {time.perf_counter() - started:.0f} s")
    for rnd, m in sorted(res["train"].items()):
        if "gradleak-leak-rate" in m:
            print(f"round {rnd} (Flower's train metrics): {m['gradleak-leaked-updates']} of "
                  f"{m['gradleak-audited']} updates leak text, ROUGE-1 {m['gradleak-rouge1']:.2f}")
    for r in res["records"]:
        if "error" in r:
            print(f"audit round {r['round']} {r['client']}: failed: {r['error']}")
            continue
        got = r["per_sample"]["reconstruction"][0]
        print(f"audit round {r['round']} {r['client']}: ROUGE-1 {r['rouge1']:.2f}, leak rate "
              f"{r['leak_rate']}: {got!r}")
    ppl = res["perplexity"]
    print(f"held-out perplexity: {ppl[0]['perplexity']:.1f} -> {ppl[max(ppl)]['perplexity']:.1f}")
    print(f"results: {args.out}/results.sqlite and {args.out}/*/round_*/*.txt")
    return res["records"]


if __name__ == "__main__":
    main()
