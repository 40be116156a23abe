"""Time to a reconstruction: gradleak vs breaching 0.1.2, wall time until the result is good.

For each ``vs_breaching`` case (identical weights, victims, labels, observed gradient and
starting images; breaching runs in its own venv through ``vs_breaching.py``'s machinery), both
attacks record their current iterate every ``k`` iterations with a timestamp (the recording time
is excluded). From those trajectories the script reports, per side:

- ``t_own``: seconds until PSNR is within 0.5 dB of that side's final PSNR (the run's own
  convergence), and the total wall time of the attack;
- ``t_ref``: seconds until PSNR reaches breaching's final PSNR - 0.5 dB (a common bar; None if
  never reached);
- ``t_lpips``: seconds until LPIPS <= 0.1 (None if never);
- ``t_result``: the run's total seconds when its *returned* result is at breaching's final
  quality (PSNR - 0.5 dB and LPIPS + 0.01), else None: what a user waits for.

With ``--restarts R`` both sides run R restarts (breaching: ``restarts.num_trials``, trial r
starting from gradleak's restart r initial images); the trajectories then hold every restart's
iterates, so ``t_ref``/``t_own`` are the first time *any* restart got there (an oracle bound).
Per case the script also pairs each variant with gradleak's ``default`` (``versus_default``:
ΔPSNR, ΔLPIPS and the time ratio), the rule for making ``stop``/``race`` defaults.

gradleak runs in several variants (``--variants``): ``default`` (the fixed budget),
``stop`` (``attack.stop``), ``race`` (``attack.race``), ``race+stop``, ``race-late`` and
``race-late-1`` (the first cut at 0.4 of the budget, after the first lr decay; keeping half,
or only the leader), ``batch``, ``batch+compile`` and ``batch+race`` (the restarts as one
vmapped problem, ``attack.batch_restarts=on``), ``compile``
(``attack.compile``) and ``compile+stop``. A compiled
variant is warmed up once per case before its timed runs (a 2-iteration attack with the same
shapes fills the compile cache); that warm-up's seconds are reported apart as ``compile_s``.
Per case it prints medians over the seeds and, paired over seeds, the geometric-mean ratio
ours / breaching of ``t_own`` and of the total time with a 95 % t-interval on the log ratio,
plus the paired PSNR difference.
The order of the sides alternates between seeds (interleaved) so that load drifts hit both.
Target: ratio <= 0.5 on every case at equal or better final quality.

    .venv/bin/python benchmarks/time_to_quality.py --iterations 200 --seeds 0 1 2 \
        --cases mlp-b1 convnet-nobn-b4 --json ttq.json

With a CUDA device (``torch.cuda.is_available()``) it also records gradleak's seconds per
iteration there; without one it says so and skips that part.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_breaching as vb  # noqa: E402  (the breaching venv, cases and worker live there)

from gradleak import metrics  # noqa: E402

VARIANTS = {"default": {}, "stop": {"stop": True}, "compile": {"compile": True},
            "compile+stop": {"compile": True, "stop": True}, "race": {"race": True},
            "race+stop": {"race": True, "stop": True},
            # the first cut after the schedule's first lr decay (3/8 of the budget), where the
            # default cut (1/8) ranks the restarts before it; keep half, or only the leader
            "race-late": {"race": True, "race_first_at": 0.4},
            "race-late-1": {"race": True, "race_first_at": 0.4, "race_keep": 0.25},
            # the restarts as one vmapped batch (attack.batch_restarts), eager or compiled
            "batch": {"batch_restarts": "on"}, "batch+compile": {"batch_restarts": "on", "compile": True},
            "batch+race": {"batch_restarts": "on", "race": True}}

# breaching's loop, instrumented: after every scheduler step the current iterate (boxed to the
# image range, as breaching's own projection right after it does) is recorded every k steps.
HOOK = '''
    _trace, _excluded, _every = [], [0.0], EVERY
    _init_optimizer = attacker._init_optimizer

    def _instrumented(candidate, *a, **k):
        optimizer, scheduler = _init_optimizer(candidate, *a, **k)
        step, count = scheduler.step, [0]
        tensor = candidate[0] if isinstance(candidate, (list, tuple)) else candidate

        def traced_step(*sa, **sk):
            out = step(*sa, **sk)
            count[0] += 1
            if count[0] % _every == 0 or count[0] == case["iterations"]:
                t0 = time.perf_counter()
                _trace.append((t0 - start - _excluded[0], count[0],
                               tensor.detach().clamp(0, 1).clone()))
                _excluded[0] += time.perf_counter() - t0
            return out

        scheduler.step = traced_step
        return optimizer, scheduler

    attacker._init_optimizer = _instrumented
'''


def worker_source(every: int) -> str:
    """vs_breaching's worker with the tracing hook (a snapshot every ``every`` steps) before the
    timed call, the snapshot time taken out of its seconds, and the trace saved."""
    src = vb.WORKER
    timed = "start = time.perf_counter()\n"
    if timed not in src or '"labels": reconstructed["labels"].cpu()}' not in src:
        raise SystemExit("vs_breaching.WORKER changed: update time_to_quality.HOOK's anchors")
    src = src.replace(timed, timed + textwrap.dedent(HOOK).replace("EVERY", str(every)), 1)
    src = src.replace("seconds = time.perf_counter() - start\n",
                      "seconds = time.perf_counter() - start - _excluded[0]\n", 1)
    src = src.replace('"labels": reconstructed["labels"].cpu()}',
                      '"labels": reconstructed["labels"].cpu(), "trace": _trace}', 1)
    return src


def run_breaching(python: Path, case: dict, args: argparse.Namespace, tmp: Path, name: str) -> dict:
    """breaching's final images, total seconds and trajectory [(seconds, iteration, images)]."""
    vb.WORKER, original = worker_source(max(1, args.iterations // args.snapshots)), vb.WORKER
    try:
        images, s_per_it = vb.run_breaching(python, case, args, tmp, name)
    finally:
        vb.WORKER = original
    out = torch.load(tmp / f"{name}.breaching.pt", weights_only=False)
    return {"images": images, "seconds": out["seconds"], "trace": out["trace"], "s_per_it": s_per_it}


def run_ours(case: dict, options: dict, snapshots: int, iterations: int) -> dict:
    """gradleak's final images, total seconds and trajectory, with ``options`` on the attack."""
    attack = case["attack"]
    for key, value in options.items():
        setattr(attack, key, value)
    trace, excluded, every = [], [0.0], max(1, iterations // snapshots)
    start = time.perf_counter()

    def on_iterate(it: int, variable: torch.Tensor) -> None:
        if (it + 1) % every == 0 or it + 1 == iterations:
            t0 = time.perf_counter()
            trace.append((t0 - start - excluded[0], it + 1, attack.images(variable).clamp(0, 1).clone()))
            excluded[0] += time.perf_counter() - t0

    attack.on_iterate = on_iterate
    try:
        recon = attack(case["obs"], seed=case["cfg"].seed, progress=False)
    finally:
        attack.on_iterate = None
    seconds = time.perf_counter() - start - excluded[0]
    if not trace or trace[-1][1] != sum(recon.iterations_used):  # the stopped run's last iterate
        trace.append((seconds, sum(recon.iterations_used), recon.images.clone()))
    return {"images": recon.images, "seconds": seconds, "trace": trace,
            "iterations_used": recon.iterations_used, "loss": recon.losses[0] if recon.losses else None}


def warm_up(name: str, args: argparse.Namespace, options: dict) -> float:
    """Seconds of a 2-iteration attack with ``options``: the compilation a compiled variant's
    first run would pay (later runs with the same shapes hit the cache)."""
    case = vb.prepare_case(name, args)
    case["attack"].iterations = 2
    start = time.perf_counter()
    run_ours(case, options, 1, 2)
    return time.perf_counter() - start


def quality(images: torch.Tensor, truth: torch.Tensor) -> tuple[float, float | None]:
    s = metrics.score(images, truth)
    return s["psnr"], s["lpips"]


def timings(run: dict, truth: torch.Tensor, reference: tuple[float, float | None]) -> dict:
    """The trajectory's times to quality (see the module docstring); ``reference`` is
    breaching's final (PSNR, LPIPS)."""
    final_psnr, final_lpips = quality(run["images"], truth)
    points = [(t, *quality(img, truth)) for t, _it, img in run["trace"]]
    ref_psnr, ref_lpips = reference

    def first(ok) -> float | None:
        return next((t for t, p, lp in points if ok(p, lp)), None)

    def at_reference(p: float, lp: float | None) -> bool:
        return p >= ref_psnr - 0.5 and (ref_lpips is None or lp is None or lp <= ref_lpips + 0.01)

    own = first(lambda p, _lp: p >= final_psnr - 0.5)
    return {"psnr": final_psnr, "lpips": final_lpips, "seconds": run["seconds"],
            "t_own": own if own is not None else run["seconds"],
            "t_ref": first(lambda p, _lp: p >= ref_psnr - 0.5),
            "t_ref_any": first(at_reference),
            # the returned result at breaching's final quality: what a user gets, at the run's end
            "t_result": run["seconds"] if at_reference(final_psnr, final_lpips) else None,
            "t_lpips": first(lambda _p, lp: lp is not None and lp <= 0.1)}


def log_ratio_interval(ours: list[float], theirs: list[float]) -> dict:
    """Geometric-mean ratio ours / theirs over seeds with a 95 % t-interval (paired)."""
    diff = vb.paired_difference([math.log(a) for a in ours], [math.log(b) for b in theirs])
    half = diff["half_width"]
    return {"ratio": math.exp(diff["mean"]),
            "low": None if half is None else math.exp(diff["mean"] - half),
            "high": None if half is None else math.exp(diff["mean"] + half)}


def cuda_seconds_per_iteration(name: str, args: argparse.Namespace) -> float | None:
    """gradleak's seconds per iteration on CUDA for this case (None without a CUDA device)."""
    if not torch.cuda.is_available():
        return None
    case = vb.prepare_case(name, args)
    model = case["model"].cuda()
    obs = dataclasses.replace(case["obs"], model=model)
    attack = case["attack"]
    attack.iterations = 20
    attack(obs, seed=0)  # warm-up (kernels, allocator)
    torch.cuda.synchronize()
    start = time.perf_counter()
    attack(obs, seed=0)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / 20


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def summarise(name: str, per_seed: list[dict], variants: list[str]) -> dict:
    """Medians per side and paired ratios per gradleak variant."""
    row = {"case": name, "seeds": [p["seed"] for p in per_seed], "per_seed": per_seed, "variants": {}}
    theirs = [p["breaching"] for p in per_seed]
    row["breaching"] = {k: statistics.median(t[k] for t in theirs) for k in ("psnr", "seconds", "t_own")}
    if all(t["lpips"] is not None for t in theirs):
        row["breaching"]["lpips"] = statistics.median(t["lpips"] for t in theirs)
    for v in variants:
        ours = [p["ours"][v] for p in per_seed]
        row["variants"][v] = {
            "median": {k: statistics.median(o[k] for o in ours) for k in ("psnr", "seconds", "t_own")}
            | ({"lpips": statistics.median(o["lpips"] for o in ours)}
               if all(o["lpips"] is not None for o in ours) else {}),
            "t_own_ratio": log_ratio_interval([o["t_own"] for o in ours], [t["t_own"] for t in theirs]),
            "total_ratio": log_ratio_interval([o["seconds"] for o in ours], [t["seconds"] for t in theirs]),
            "psnr_difference": vb.paired_difference([o["psnr"] for o in ours], [t["psnr"] for t in theirs]),
            "lpips_difference": (None if any(x["lpips"] is None for x in ours + theirs) else
                                 vb.paired_difference([o["lpips"] for o in ours],
                                                      [t["lpips"] for t in theirs])),
            "reached_result": sum(o["t_result"] is not None for o in ours),
            "reached_ref": sum(o["t_ref"] is not None for o in ours),
            "iterations_used": statistics.median(sum(o["iterations_used"]) for o in ours)}
    return row


def versus_default(row: dict) -> dict:
    """Per non-default variant, paired over seeds against gradleak's ``default`` (the decision
    rule for making ``stop``/``race`` defaults: ΔPSNR within ±0.5 dB and ΔLPIPS within ±0.01,
    or better): the differences with their 95 % intervals and the total-time ratio."""
    out = {}
    seeds = row["per_seed"]
    if not seeds or "default" not in seeds[0]["ours"]:
        return out
    base = [p["ours"]["default"] for p in seeds]
    for v in seeds[0]["ours"]:
        if v == "default":
            continue
        mine = [p["ours"][v] for p in seeds]
        out[v] = {"psnr": vb.paired_difference([m["psnr"] for m in mine], [b["psnr"] for b in base]),
                  "lpips": None if any(x["lpips"] is None for x in mine + base) else
                  vb.paired_difference([m["lpips"] for m in mine], [b["lpips"] for b in base]),
                  "time": log_ratio_interval([m["seconds"] for m in mine],
                                             [b["seconds"] for b in base])}
    return out


def print_row(row: dict) -> None:
    b = row["breaching"]
    print(f"{row['case']:16} breaching: PSNR {b['psnr']:.2f}  total {b['seconds']:.2f}s  "
          f"t_own {b['t_own']:.2f}s  compile: {row.get('compile_s') or '-'}")
    for v, r in row["variants"].items():
        m, own, tot, dp = r["median"], r["t_own_ratio"], r["total_ratio"], r["psnr_difference"]
        dl = r["lpips_difference"] or {"mean": math.nan, "half_width": None}
        print(f"{'':16} {v:13} PSNR {m['psnr']:.2f} (d {dp['mean']:+.2f} +- {_fmt(dp['half_width'])})  "
              f"dLPIPS {dl['mean']:+.4f} +- {_fmt(dl['half_width'], '.4f')}  "
              f"at breaching's quality {r['reached_result']}/{len(row['seeds'])}  "
              f"total {m['seconds']:.2f}s  t_own {m['t_own']:.2f}s  its {r['iterations_used']:.0f}  "
              f"t_own ratio {own['ratio']:.2f} [{_fmt(own['low'])}, {_fmt(own['high'])}]  "
              f"total ratio {tot['ratio']:.2f} [{_fmt(tot['low'])}, {_fmt(tot['high'])}]", flush=True)
    for v, d in row.get("versus_default", {}).items():
        lp = d["lpips"] or {"mean": math.nan, "half_width": None}
        print(f"{'':16} {v:13} vs default: dPSNR {d['psnr']['mean']:+.2f} +- "
              f"{_fmt(d['psnr']['half_width'])}  dLPIPS {lp['mean']:+.4f} +- "
              f"{_fmt(lp['half_width'], '.4f')}  time ratio {d['time']['ratio']:.2f} "
              f"[{_fmt(d['time']['low'])}, {_fmt(d['time']['high'])}]", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--cases", nargs="+", default=["mlp-b1", "mlp-b4", "convnet-nobn-b1",
                                                       "convnet-nobn-b4", "convnet-bn-b1", "convnet-bn-b4"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["default", "stop"], choices=list(VARIANTS))
    parser.add_argument("--snapshots", type=int, default=40, help="trajectory points per run")
    parser.add_argument("--restarts", type=int, default=1,
                        help="restarts on both sides (breaching: restarts.num_trials)")
    parser.add_argument("--stop-window", type=int, default=100, help="attack.stop_window")
    parser.add_argument("--stop-tolerance", type=float, default=1e-3)
    parser.add_argument("--venv", type=Path, default=Path("/tmp/breaching-venv"))
    parser.add_argument("--tv", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    # vs_breaching.prepare_case / run_breaching read these
    args.ours_tv = args.ours_lr = None
    args.ours_tv_border, args.keep, args.same_init, args.seed = "none", "last", True, 0
    unknown = [c for c in args.cases if c not in vb.CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(vb.CASES)}")
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    python = vb.ensure_venv(args.venv)
    print(f"iterations {args.iterations} x {args.restarts} restarts, seeds {args.seeds}, "
          f"TV {args.tv:g}, lr {args.lr:g}, "
          f"same initial images, CPU, 1 thread per side; stop window {args.stop_window}, "
          f"tolerance {args.stop_tolerance:g}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ttq_") as tmpdir:
        for name in args.cases:
            per_seed, compile_s = [], {}
            for i, seed in enumerate(args.seeds):
                args.seed = seed
                entry = {"seed": seed, "ours": {}}
                sides = ["breaching", *args.variants]
                for side in (sides if i % 2 == 0 else sides[::-1]):  # interleaved order
                    case = vb.prepare_case(name, args)
                    if side == "breaching":
                        entry["breaching_run"] = run_breaching(python, case, args, Path(tmpdir), name)
                    else:
                        opts = {**VARIANTS[side], "stop_window": args.stop_window,
                                "stop_tolerance": args.stop_tolerance}
                        if "race_first_at" in opts:
                            at = opts.pop("race_first_at")
                            opts["race_first"] = max(1, math.ceil(args.iterations * at))
                        if opts.get("compile") and side not in compile_s:
                            compile_s[side] = warm_up(name, args, opts)
                        entry["ours"][side] = run_ours(case, opts, args.snapshots, args.iterations)
                truth = case["images"]
                theirs = entry.pop("breaching_run")
                ref = quality(theirs["images"], truth)
                entry["breaching"] = timings(theirs, truth, ref)
                for side, run in entry["ours"].items():
                    used = {"iterations_used": run["iterations_used"], "loss": run["loss"]}
                    entry["ours"][side] = timings(run, truth, ref) | used
                per_seed.append(entry)
            row = summarise(name, per_seed, args.variants)
            row["compile_s"] = compile_s
            row["cuda_s_per_it"] = cuda_seconds_per_iteration(name, args)
            row["versus_default"] = versus_default(row)
            rows.append(row)
            print_row(row)
            if args.json is not None:
                partial = args.json.with_name(args.json.name + ".part")
                partial.write_text(json.dumps(rows, indent=2))
                partial.replace(args.json)
    if not torch.cuda.is_available():
        print("no CUDA device: seconds per iteration on CUDA not measured")
    print("\nratio = ours / breaching, geometric mean over seeds [95 % interval]; target <= 0.5")


if __name__ == "__main__":
    main()
